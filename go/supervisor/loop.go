package supervisor

// The supervisor's I/O. One goroutine (run) owns all state and waits in epoll_wait on
// the listening socket, every connection, and an eventfd that other goroutines (Stop,
// the root's reaper) use to hand it work. It reads and validates frames, handles them
// and writes commands itself, with non-blocking sockets.
//
// Why not a goroutine per connection: that design paid a goroutine wake-up per frame
// (netpoller, then a channel hop to the state goroutine, then another to the
// connection's writer), and each wake-up could cost a futex and a thread switch on the
// two cores the tests need. On 2000 trivial tests the main process's Go threads used
// ~1.0 s of CPU, 0.5 ms per test, as much as replaying the reports; see docs/engine.md.
//
// The Python thread waits for events in Poll on a second eventfd, in a plain blocking
// poll(2): no goroutine parks, so waking it takes no hand-off between Go threads.

import (
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"github.com/tach-dev/tach/go/wire"
	"golang.org/x/sys/unix"
)

const (
	tickEvery  = 20 * time.Millisecond // deadlines and timers are checked this often
	readChunk  = 64 << 10              // free space a read gets
	readBudget = 1 << 20               // per connection per wake-up, so one cannot starve the rest
	maxEvents  = 64
)

type conn struct {
	fd     int
	role   string
	id     int
	rbuf   []byte // read, not yet a whole frame
	wbuf   []byte // commands the socket had no room for yet
	armed  bool   // EPOLLOUT is watched: wbuf is waiting
	broken bool   // a write failed: the peer is gone; what is left to send is dropped
	closed bool
}

// newLoop makes the epoll instance and the eventfds, and watches the listener.
func (s *Supervisor) newLoop() error {
	var err error
	if s.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	if s.ctlFD, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		unix.Close(s.epfd)
		return fmt.Errorf("eventfd: %w", err)
	}
	if s.evFD, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		unix.Close(s.epfd)
		unix.Close(s.ctlFD)
		return fmt.Errorf("eventfd: %w", err)
	}
	for _, fd := range []int{s.lnFD, s.ctlFD} {
		if err = s.watch(fd, unix.EPOLLIN, unix.EPOLL_CTL_ADD); err != nil {
			unix.Close(s.epfd)
			unix.Close(s.ctlFD)
			unix.Close(s.evFD)
			return err
		}
	}
	return nil
}

func (s *Supervisor) watch(fd int, events uint32, op int) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	if err := unix.EpollCtl(s.epfd, op, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl of fd %d: %w", fd, err)
	}
	return nil
}

// run is the supervisor: it returns when the run has ended (maybeEnd).
func (s *Supervisor) run() {
	evs := make([]unix.EpollEvent, maxEvents)
	nextTick := time.Now().Add(tickEvery)
	for {
		ms := 0
		if wait := time.Until(nextTick); wait > 0 {
			ms = int((wait + time.Millisecond - 1) / time.Millisecond)
		}
		n, err := unix.EpollWait(s.epfd, evs, ms)
		if err != nil && err != unix.EINTR {
			// Cannot happen with a valid epoll fd; if it does, nothing can be
			// supervised: kill the run and end it when the reaper reports the root
			// (its closure is picked up here, without epoll), rather than hang.
			if !s.stopping {
				s.emit(Event{"t": "note", "msg": "epoll_wait failed, stopping the run: " + err.Error()})
			}
			s.stopping = true
			s.killAll()
			time.Sleep(tickEvery)
			s.runControl()
			if s.over {
				return
			}
			continue
		}
		for i := 0; i < n; i++ {
			fd, ready := int(evs[i].Fd), evs[i].Events
			switch fd {
			case s.lnFD:
				s.acceptAll()
			case s.ctlFD:
				s.runControl()
			default:
				cn := s.conns[fd]
				if cn == nil {
					continue // closed while handling an earlier event of this batch
				}
				if ready&unix.EPOLLOUT != 0 {
					s.flush(cn)
				}
				if ready&^uint32(unix.EPOLLOUT) != 0 {
					s.readFrom(cn)
				}
			}
			if s.over {
				return
			}
		}
		if now := time.Now(); !now.Before(nextTick) {
			nextTick = now.Add(tickEvery)
			s.checkTimers(now)
			if s.step() {
				return
			}
		}
	}
}

// step follows every input: dispatch what the schedule allows now, and end the run
// when everything is accounted for. True when the run has ended.
func (s *Supervisor) step() bool {
	s.dispatch()
	return s.maybeEnd()
}

// send hands f to run(), to be called there; dropped once the run is over.
func (s *Supervisor) send(f func()) {
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	if s.ctlClosed {
		return
	}
	s.ctlq = append(s.ctlq, f)
	signal(s.ctlFD) // under the lock: the loop closes ctlFD under it too
}

func (s *Supervisor) runControl() {
	drain(s.ctlFD)
	s.ctlMu.Lock()
	q := s.ctlq
	s.ctlq = nil
	s.ctlMu.Unlock()
	for _, f := range q {
		f()
		if s.step() {
			return
		}
	}
}

func (s *Supervisor) acceptAll() {
	for {
		fd, _, err := unix.Accept4(s.lnFD, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch err {
		case nil:
		case unix.EINTR, unix.ECONNABORTED:
			continue
		case unix.EAGAIN:
			return
		default:
			// Out of fds or the like: no process can connect any more. Their tests
			// fail as their processes end; say why.
			s.emit(Event{"t": "note", "msg": "accepting connections: " + err.Error()})
			_ = s.watch(s.lnFD, 0, unix.EPOLL_CTL_DEL)
			return
		}
		if err := s.watch(fd, unix.EPOLLIN|unix.EPOLLRDHUP, unix.EPOLL_CTL_ADD); err != nil {
			unix.Close(fd)
			s.emit(Event{"t": "note", "msg": err.Error()})
			continue
		}
		s.conns[fd] = &conn{fd: fd, id: -1}
	}
}

// readFrom reads what cn has sent and handles each whole frame, in order, then the end
// of the connection if it came.
func (s *Supervisor) readFrom(cn *conn) {
	for got := 0; got < readBudget && !cn.closed; {
		if cap(cn.rbuf)-len(cn.rbuf) < readChunk {
			b := make([]byte, len(cn.rbuf), 2*cap(cn.rbuf)+readChunk)
			copy(b, cn.rbuf)
			cn.rbuf = b
		}
		n, err := unix.Read(cn.fd, cn.rbuf[len(cn.rbuf):cap(cn.rbuf)])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return
		case err != nil:
			s.input(input{c: cn, err: fmt.Errorf("reading: %w", err)})
			return
		case n == 0:
			err := io.EOF
			if len(cn.rbuf) > 0 {
				err = fmt.Errorf("connection ended %d bytes into a frame: %w", len(cn.rbuf), wire.ErrTruncated)
			}
			s.input(input{c: cn, err: err})
			return
		}
		cn.rbuf = cn.rbuf[:len(cn.rbuf)+n]
		got += n
		s.frames(cn)
	}
}

// frames handles every whole frame in cn.rbuf and keeps the partial rest.
func (s *Supervisor) frames(cn *conn) {
	buf := cn.rbuf
	for !cn.closed {
		p, rest, err := wire.Cut(buf, 0)
		if err != nil {
			s.input(input{c: cn, err: err})
			return
		}
		if p == nil {
			break
		}
		buf = rest
		raw := append([]byte(nil), p...) // kept (reports are replayed from it); buf is reused
		m, err := schema.Decode(raw)
		if err != nil {
			s.input(input{c: cn, err: err})
			return
		}
		s.input(input{c: cn, msg: m, raw: raw})
	}
	if cn.closed {
		return
	}
	// Keep the partial frame at the front; let go of a large buffer once it is empty.
	if len(buf) == 0 && cap(cn.rbuf) > 4*readChunk {
		cn.rbuf = nil
	} else {
		cn.rbuf = cn.rbuf[:copy(cn.rbuf, buf)]
	}
}

// input handles one frame or the end of a connection, then steps the schedule.
func (s *Supervisor) input(in input) {
	s.handle(in)
	s.step()
}

// write queues b for cn and writes what the socket takes now.
func (s *Supervisor) write(cn *conn, b []byte) {
	if cn.closed || cn.broken {
		return
	}
	if len(cn.wbuf) > 0 {
		cn.wbuf = append(cn.wbuf, b...)
		return
	}
	cn.wbuf = b
	s.flush(cn)
}

// flush writes cn.wbuf until the socket is full (then EPOLLOUT says when to go on).
func (s *Supervisor) flush(cn *conn) {
	for len(cn.wbuf) > 0 {
		// MSG_NOSIGNAL: a peer that died must not SIGPIPE the main process.
		n, err := unix.SendmsgN(cn.fd, cn.wbuf, nil, nil, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if !cn.armed && s.watch(cn.fd, unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLOUT, unix.EPOLL_CTL_MOD) == nil {
				cn.armed = true
			}
			return
		case err != nil:
			// The peer is gone (its end of the story comes as EOF on the read side).
			cn.broken, cn.wbuf = true, nil
		default:
			cn.wbuf = cn.wbuf[n:]
		}
	}
	cn.wbuf = nil
	if cn.armed && s.watch(cn.fd, unix.EPOLLIN|unix.EPOLLRDHUP, unix.EPOLL_CTL_MOD) == nil {
		cn.armed = false
	}
}

func (s *Supervisor) closeConn(cn *conn) {
	if cn == nil || cn.closed {
		return
	}
	cn.closed = true
	_ = s.watch(cn.fd, 0, unix.EPOLL_CTL_DEL)
	unix.Close(cn.fd)
	delete(s.conns, cn.fd)
	cn.rbuf, cn.wbuf = nil, nil
}

// closeLoop releases what the loop owns once the run has ended: Poll's eventfd is
// closed by whoever is last to need it (see Poll).
func (s *Supervisor) closeLoop() {
	for _, cn := range s.conns {
		s.closeConn(cn)
	}
	unix.Close(s.lnFD)
	unix.Close(s.epfd)
	s.ctlMu.Lock()
	s.ctlClosed = true
	unix.Close(s.ctlFD)
	s.ctlMu.Unlock()
}

// Poll waits up to timeout for events and returns those queued, and whether they are
// the last (they include the end event). It waits in poll(2) on an eventfd that emit
// signals, so no Go thread has to hand this one its work.
func (s *Supervisor) Poll(timeout time.Duration) (evs []Event, ended bool) {
	s.mu.Lock()
	if len(s.events) == 0 && !s.ended && s.evFD >= 0 {
		fd := s.evFD
		s.pollers++
		s.mu.Unlock()
		waitReadable(fd, timeout)
		s.mu.Lock()
		s.pollers--
		// Under mu: the eventfd is only signalled while a Poll waits (emit), so only
		// one that waited has a signal to clear.
		if s.evFD >= 0 {
			drain(s.evFD)
		}
	}
	evs, s.events = s.events, nil
	// The end event is the last one queued, with ended set at once (end): ended means
	// the caller now has every event. (Waiting for a Poll that returns none after the
	// end kept a finished run registered in pytest_tach._core when the caller stopped at the
	// end event, and the next in-process run was refused.)
	ended = s.ended
	s.releaseEvFD()
	s.mu.Unlock()
	return evs, ended
}

func (s *Supervisor) emit(e Event) {
	s.mu.Lock()
	s.queue(e)
	s.mu.Unlock()
}

// end queues the last event and marks the run ended, at once: a Poll in between would
// otherwise see the run ended without its end event.
func (s *Supervisor) end(e Event) {
	s.mu.Lock()
	s.ended = true
	s.queue(e)
	s.releaseEvFD()
	s.mu.Unlock()
}

// queuedHook, when set (by this package's tests, before any run), sees every event
// queued for Poll: they check each against its declaration in proto.go.
var queuedHook func(Event)

// queue adds e for Poll and wakes a Poll that waits (under mu). One that does not
// wait looks at the events first, so no signal is needed then.
func (s *Supervisor) queue(e Event) {
	if queuedHook != nil {
		queuedHook(e)
	}
	s.events = append(s.events, e)
	if len(s.events) == 1 && s.pollers > 0 && s.evFD >= 0 {
		signal(s.evFD)
	}
}

// releaseEvFD closes Poll's eventfd once the run has ended and no Poll waits on it
// (under mu): whichever of end and the last waiting Poll comes later closes it.
func (s *Supervisor) releaseEvFD() {
	if s.ended && s.pollers == 0 && s.evFD >= 0 {
		unix.Close(s.evFD)
		s.evFD = -1
	}
}

func waitReadable(fd int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		ms := int((time.Until(deadline) + time.Millisecond - 1) / time.Millisecond)
		if ms <= 0 {
			return
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, ms); err != unix.EINTR {
			return // readable, timed out, or an error the caller's next look settles
		}
	}
}

var one = binary.NativeEndian.AppendUint64(nil, 1)

// signal makes an eventfd readable.
func signal(fd int) { _, _ = unix.Write(fd, one) }

// drain makes an eventfd unreadable again.
func drain(fd int) {
	var b [8]byte
	_, _ = unix.Read(fd, b[:])
}
