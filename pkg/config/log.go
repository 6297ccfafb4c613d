package config

import (
	"fmt"
	"log/slog"
	"strings"
)

// ParseLogLevel maps a level name to slog, accepting the Python names
// (DEBUG, WARNING, CRITICAL) that log_level and WGKEX_DEBUG carry.
func ParseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug", "true", "1":
		return slog.LevelDebug, nil
	case "info", "", "false", "0":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error", "critical", "fatal":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown log level %q (want debug, info, warn or error)", s)
}
