// Package text holds string helpers shared by the packages that quote
// untrusted input in errors and logs.
package text

// Truncate returns s cut to n bytes with "..." appended when it is longer,
// so that a hostile or broken peer cannot flood an error message or a log
// line. It may cut inside a UTF-8 sequence; callers quote the result (%q),
// which keeps the output valid.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
