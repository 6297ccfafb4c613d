// Package wgdevice creates WireGuard interfaces: a kernel WireGuard link when
// the kernel has the module, otherwise a wireguard-go device running in this
// process on a TUN device, with the UAPI socket that wgctrl and wg(8) talk to.
package wgdevice

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/jsimonetti/rtnetlink/v2"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/freifunkMUC/wgkex/pkg/kernel"
)

// Device is a running userspace WireGuard interface.
type Device struct {
	Name string
	dev  *device.Device
	uapi net.Listener
	wg   sync.WaitGroup
	once sync.Once
}

// start creates the TUN interface name and serves its UAPI socket in
// /var/run/wireguard/<name>.sock. The link is left down; configure it
// (addresses, addrgenmode) and bring it up as with a kernel device.
func start(name string, log *slog.Logger) (*Device, error) {
	if log == nil {
		log = slog.Default()
	}
	t, err := tun.CreateTUN(name, device.DefaultMTU)
	if err != nil {
		return nil, fmt.Errorf("create tun %s: %w", name, err)
	}
	if real, err := t.Name(); err == nil {
		name = real
	}
	file, err := ipc.UAPIOpen(name)
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("open UAPI socket for %s: %w", name, err)
	}
	l := log.With("wireguard", name)
	dev := device.NewDevice(t, conn.NewDefaultBind(), &device.Logger{
		Verbosef: func(format string, args ...any) { l.Debug(fmt.Sprintf(format, args...)) },
		Errorf:   func(format string, args ...any) { l.Warn(fmt.Sprintf(format, args...)) },
	})
	uapi, err := ipc.UAPIListen(name, file)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("listen on UAPI socket for %s: %w", name, err)
	}
	d := &Device{Name: name, dev: dev, uapi: uapi}
	d.wg.Add(2)
	go d.serve()
	go func() {
		// The device stops when its TUN goes away (ip link del): take the
		// UAPI socket with it, so that nobody finds a ghost interface.
		defer d.wg.Done()
		<-dev.Wait()
		uapi.Close()
	}()
	return d, nil
}

// serve answers UAPI clients until Close.
func (d *Device) serve() {
	defer d.wg.Done()
	for {
		c, err := d.uapi.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				d.dev.Close()
			}
			return
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.dev.IpcHandle(c) // returns when the client hangs up
		}()
	}
}

// Done is closed when the device has stopped (Close, or the TUN vanished).
func (d *Device) Done() <-chan struct{} { return d.dev.Wait() }

// Close removes the socket and the interface.
func (d *Device) Close() {
	d.once.Do(func() {
		d.uapi.Close()
		d.dev.Close()
		d.wg.Wait()
	})
}

// Create makes the WireGuard interface name: a kernel WireGuard link when
// the kernel has the module (and forceUserspace is false), else a device
// in this process (returned; nil for kernel WireGuard). Either way the
// link's addrgenmode is none, so that only the addresses derived from
// WireGuard keys are on it, and it is left down.
func Create(k *kernel.Conn, name string, forceUserspace bool, log *slog.Logger) (*Device, error) {
	if log == nil {
		log = slog.Default()
	}
	if !forceUserspace {
		err := k.NewLink(&rtnetlink.LinkMessage{Family: unix.AF_UNSPEC,
			Attributes: &rtnetlink.LinkAttributes{Name: name, Info: &rtnetlink.LinkInfo{Kind: "wireguard"}}})
		if err == nil {
			return nil, kernel.SetAddrGenModeNone(name)
		}
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return nil, err
		}
		log.Info("no kernel WireGuard; running WireGuard in userspace in this process", "interface", name)
	}
	dev, err := start(name, log)
	if err != nil {
		return nil, err
	}
	if err := kernel.SetAddrGenModeNone(name); err != nil {
		dev.Close()
		return nil, err
	}
	return dev, nil
}
