package kernel_test

import (
	"net/netip"
	"testing"

	"github.com/freifunkMUC/wgkex/internal/netns"
	"github.com/freifunkMUC/wgkex/pkg/kernel"
	"github.com/freifunkMUC/wgkex/pkg/wgdevice"
)

// TestIdempotentEntries: replace twice is one route, a second zero-MAC FDB
// entry coexists with the first, and removing what is gone succeeds.
func TestIdempotentEntries(t *testing.T) {
	if !netns.Run(t) {
		return
	}
	k, err := kernel.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	dev, err := wgdevice.Create(k, "wg-t", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	wg, _ := k.LinkIndex("wg-t")
	own := netip.MustParseAddr("fe80::2")
	if err := k.AddAddr(wg, netip.PrefixFrom(own, 128)); err != nil {
		t.Fatal(err)
	}
	if err := k.AddAddr(wg, netip.PrefixFrom(own, 128)); err != nil {
		t.Fatalf("second AddAddr: %v", err)
	}
	if err := k.SetUp(wg); err != nil {
		t.Fatal(err)
	}
	if err := k.CreateVXLAN(kernel.VXLAN{Name: "vx-t", ID: 99, Local: own, Dev: wg}); err != nil {
		t.Fatal(err)
	}
	vx, _ := k.LinkIndex("vx-t")

	a, b := netip.MustParseAddr("fe80::a"), netip.MustParseAddr("fe80::b")
	for i := 0; i < 2; i++ {
		for _, x := range []netip.Addr{a, b} {
			if err := k.ReplaceRoute(wg, netip.PrefixFrom(x, 128)); err != nil {
				t.Fatal(err)
			}
			if err := k.AppendFDB(vx, x, wg); err != nil {
				t.Fatalf("append %s (round %d): %v", x, i, err)
			}
		}
	}
	routes, _ := k.Routes(wg)
	fdb, _ := k.FDB(vx)
	if len(routes) != 2 || len(fdb) != 2 || fdb[0].Via != wg {
		t.Fatalf("routes %v fdb %v", routes, fdb)
	}
	addrs, _ := k.Addrs(wg)
	if len(addrs) != 1 || addrs[0].Addr() != own {
		t.Errorf("addrs %v (addrgenmode none should leave only ours)", addrs)
	}
	for i := 0; i < 2; i++ {
		for _, x := range []netip.Addr{a, b} {
			if err := k.DeleteFDB(vx, x, wg); err != nil {
				t.Fatalf("delete fdb %s (round %d): %v", x, i, err)
			}
			if err := k.DeleteRoute(wg, netip.PrefixFrom(x, 128)); err != nil {
				t.Fatalf("delete route %s (round %d): %v", x, i, err)
			}
		}
	}
	routes, _ = k.Routes(wg)
	fdb, _ = k.FDB(vx)
	if len(routes) != 0 || len(fdb) != 0 {
		t.Fatalf("left: routes %v fdb %v", routes, fdb)
	}
	if err := k.DeleteLink("vx-t"); err != nil {
		t.Fatal(err)
	}
	if err := k.DeleteLink("vx-t"); err != nil {
		t.Fatalf("second delete: %v", err)
	}
}
