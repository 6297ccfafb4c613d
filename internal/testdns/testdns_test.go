package testdns

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// ask sends one query and returns the reply's RCode and answers.
func ask(t *testing.T, s *Server, name string, typ dnsmessage.Type) (dnsmessage.RCode, []dnsmessage.Resource) {
	t.Helper()
	q := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, RecursionDesired: true})
	q.StartQuestions()
	q.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET})
	msg, _ := q.Finish()
	c, err := net.Dial("udp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write(msg)
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	var m dnsmessage.Message
	if err := m.Unpack(buf[:n]); err != nil {
		t.Fatal(err)
	}
	if m.ID != 7 || !m.Response || len(m.Questions) != 1 {
		t.Fatalf("reply header %+v", m.Header)
	}
	return m.RCode, m.Answers
}

func TestAnswers(t *testing.T) {
	s, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Set("gw1.mesh.test", netip.MustParseAddr("10.99.0.2"))

	rc, ans := ask(t, s, "GW1.mesh.test.", dnsmessage.TypeA)
	if rc != dnsmessage.RCodeSuccess || len(ans) != 1 || ans[0].Body.(*dnsmessage.AResource).A != [4]byte{10, 99, 0, 2} {
		t.Errorf("A: %v %v", rc, ans)
	}
	// NODATA for the type the name lacks: success with no answer.
	if rc, ans := ask(t, s, "gw1.mesh.test.", dnsmessage.TypeAAAA); rc != dnsmessage.RCodeSuccess || len(ans) != 0 {
		t.Errorf("AAAA: %v %v, want NODATA", rc, ans)
	}
	if rc, _ := ask(t, s, "other.mesh.test.", dnsmessage.TypeA); rc != dnsmessage.RCodeNameError {
		t.Errorf("unknown name: %v, want NXDOMAIN", rc)
	}
	s.Set("gw1.mesh.test", netip.MustParseAddr("fd00::2"))
	if rc, ans := ask(t, s, "gw1.mesh.test.", dnsmessage.TypeAAAA); rc != dnsmessage.RCodeSuccess || len(ans) != 1 {
		t.Errorf("AAAA after Set: %v %v", rc, ans)
	}
}
