package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/paddock-io/paddock/nbd"
)

// ioctls of the kernel's nbd driver (linux/nbd.h): _IO(0xab, nr).
const (
	nbdSetSock       = 0xab00
	nbdSetBlksize    = 0xab01
	nbdDoIt          = 0xab03
	nbdClearSock     = 0xab04
	nbdSetSizeBlocks = 0xab07
	nbdSetTimeout    = 0xab09
	nbdSetFlags      = 0xab0a
)

func init() {
	cmd := &cobra.Command{
		Use:   "attach nbd://HOST:PORT/EXPORT /dev/nbdN",
		Short: "Attach an NBD export to a kernel nbd device (needs the nbd module)",
		Long: `attach connects a kernel block device (/dev/nbdN) to an NBD export, so the
host itself can use a paddock volume as a disk. It needs the kernel's nbd
module (modprobe nbd nbds_max=16). The command stays in the foreground while
the device is attached; stop it (Ctrl-C or "nbd-client -d /dev/nbdN") to
detach. QEMU does not need this: it speaks NBD itself (-drive file=nbd://...).`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error { return runAttach(args[0], args[1]) },
	}
	rootCmd.AddCommand(cmd)
}

func runAttach(uri, device string) error {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "nbd" || u.Host == "" {
		return fmt.Errorf("%q is not an nbd://HOST:PORT/EXPORT URI (TLS exports cannot be attached to the kernel)", uri)
	}
	if !strings.HasPrefix(device, "/dev/nbd") {
		return fmt.Errorf("%q is not an nbd device (/dev/nbd0, /dev/nbd1, ...)", device)
	}
	dev, err := os.OpenFile(device, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s does not exist: the kernel nbd module is not loaded (run \"modprobe nbd\"; containers and some VMs cannot load it — attach QEMU directly with -drive file=%s instead)", device, uri)
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", device, err)
	}
	defer dev.Close()
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "10809")
	}
	conn, err := net.Dial("tcp", host)
	if err != nil {
		return err
	}
	defer conn.Close()
	size, flags, err := nbd.Negotiate(conn, nbd.ClientOptions{Export: strings.TrimPrefix(u.Path, "/")})
	if err != nil {
		return err
	}
	f, err := conn.(*net.TCPConn).File()
	if err != nil {
		return err
	}
	defer f.Close()
	const blockBytes = 4096
	fd := int(dev.Fd())
	steps := []struct {
		name string
		req  uint
		arg  int
	}{
		{"NBD_SET_BLKSIZE", nbdSetBlksize, blockBytes},
		{"NBD_SET_SIZE_BLOCKS", nbdSetSizeBlocks, int(size / blockBytes)},
		{"NBD_SET_FLAGS", nbdSetFlags, int(flags)},
		{"NBD_SET_TIMEOUT", nbdSetTimeout, 30},
		{"NBD_SET_SOCK", nbdSetSock, int(f.Fd())},
	}
	for _, s := range steps {
		if err := unix.IoctlSetInt(fd, s.req, s.arg); err != nil {
			return fmt.Errorf("%s on %s: %w", s.name, device, err)
		}
	}
	fmt.Fprintf(os.Stderr, "paddock: %s attached to %s (%s); detach with Ctrl-C\n", uri, device, humanBytes(size))
	// NBD_DO_IT blocks until the device is disconnected.
	err = unix.IoctlSetInt(fd, nbdDoIt, 0)
	unix.IoctlSetInt(fd, nbdClearSock, 0)
	if err != nil && !errors.Is(err, unix.EINTR) {
		return fmt.Errorf("NBD_DO_IT: %w", err)
	}
	return nil
}
