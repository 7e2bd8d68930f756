package nft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// monitorReadBuffer is the receive buffer of the notification socket. A
// rebuild of a large table sends one notification per element, all at
// commit time; when they overflow the buffer anyway, the generations
// missed are checked (genEvent.lost).
const monitorReadBuffer = 32 << 20

// watch listens to the nftables notifications of the backend's network
// namespace. google/nftables's Monitor does not say which table an
// element notification belongs to, so the messages are read here: every
// nftables object message carries its table's name as attribute 1, and
// each commit ends with a NEWGEN message carrying the generation.
func (b *netlinkBackend) watch(ctx context.Context, table string, from uint32, on func(genEvent)) error {
	conn, last, err := b.subscribe()
	if err != nil {
		return err
	}
	go func() {
		defer on(genEvent{down: true})
		on(genEvent{lost: true, from: from, gen: last})
		for {
			last = b.receive(ctx, conn, table, last, on)
			conn.Close()
			if ctx.Err() == nil {
				on(genEvent{down: true})
			}
			// The socket broke: listen again, and check what was missed.
			for {
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
				var gen uint32
				if conn, gen, err = b.subscribe(); err == nil {
					on(genEvent{lost: true, from: last, gen: gen})
					last = gen
					break
				}
			}
		}
	}()
	return nil
}

// receive reads notifications until ctx is done or the socket fails for
// another reason than an overflow, and returns the last generation seen.
func (b *netlinkBackend) receive(ctx context.Context, conn *netlink.Conn, table string, last uint32, on func(genEvent)) uint32 {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	touched := false
	for {
		msgs, err := conn.Receive()
		if ctx.Err() != nil {
			return last
		}
		if errors.Is(err, unix.ENOBUFS) {
			// Notifications were lost: what happened since last is
			// unknown, until now.
			if gen, err := b.generation(); err == nil {
				on(genEvent{lost: true, from: last, gen: gen})
				last, touched = gen, false
			}
			continue
		}
		if err != nil {
			return last
		}
		for _, m := range msgs {
			switch gen, isGen, ours := parseNotification(m, table); {
			case isGen:
				on(genEvent{gen: gen, touched: touched})
				last, touched = gen, false
			case ours:
				touched = true
			}
		}
	}
}

// subscribe opens a socket in the nftables notification group and returns
// it with the generation current when it started listening.
func (b *netlinkBackend) subscribe() (*netlink.Conn, uint32, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: b.netns})
	if err != nil {
		return nil, 0, fmt.Errorf("open nftables notification socket: %w", err)
	}
	if err := conn.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		conn.Close()
		return nil, 0, fmt.Errorf("join nftables notification group: %w", err)
	}
	setReadBuffer(conn, monitorReadBuffer)
	gen, err := b.generation()
	if err != nil {
		conn.Close()
		return nil, 0, err
	}
	return conn, gen, nil
}

// setReadBuffer sizes the socket's receive buffer beyond rmem_max when
// allowed (CAP_NET_ADMIN), else as far as rmem_max allows.
func setReadBuffer(conn *netlink.Conn, n int) {
	raw, err := conn.SyscallConn()
	if err == nil {
		var serr error
		err = raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
		})
		if err == nil && serr == nil {
			return
		}
	}
	_ = conn.SetReadBuffer(n)
}

// parseNotification reads one nftables notification: a new generation
// (and its number), or a change to an object of the inet table named
// table.
func parseNotification(m netlink.Message, table string) (gen uint32, isGen, ours bool) {
	if m.Header.Type>>8 != unix.NFNL_SUBSYS_NFTABLES || len(m.Data) < 4 {
		return 0, false, false
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return 0, false, false
	}
	ad.ByteOrder = binary.BigEndian
	isGen = m.Header.Type&0xff == unix.NFT_MSG_NEWGEN
	for ad.Next() {
		if ad.Type() != 1 { // NFTA_GEN_ID; NFTA_{TABLE_NAME,CHAIN,RULE,SET,SET_ELEM_LIST,OBJ,FLOWTABLE}_TABLE
			continue
		}
		if isGen {
			return ad.Uint32(), true, false
		}
		return 0, false, m.Data[0] == unix.NFPROTO_INET && ad.String() == table
	}
	return 0, false, false
}
