// Package wire reads and validates the frames that tach's Python processes send to the
// supervisor: a 4-byte big-endian length followed by that many bytes of msgpack.
//
// The supervisor treats every frame as untrusted input: a test can write anything to
// the file descriptors it inherits. So nothing here panics on bad input; a frame that is
// too large, truncated, not msgpack, or not a map with a known string "t" (type) field
// comes back as an error that the caller turns into an error event.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// HeaderSize is the size of the length prefix.
const HeaderSize = 4

// DefaultMaxFrame caps a frame's payload. A test report with a long traceback and
// captured output is rarely above a few hundred KiB; 16 MiB leaves room for huge captured
// output while bounding what a misbehaving process can make the supervisor allocate.
const DefaultMaxFrame = 16 << 20

// Errors that classify a bad frame. Callers match them with errors.Is.
var (
	ErrTooLarge  = errors.New("frame exceeds size cap")
	ErrTruncated = errors.New("truncated frame")
	ErrMalformed = errors.New("malformed frame")
	ErrUnknown   = errors.New("unknown frame type")
)

// Message is a decoded, validated frame.
type Message struct {
	Type   string
	Fields map[string]any
}

// Reader reads length-prefixed frames from a stream.
type Reader struct {
	r   io.Reader
	max int
	hdr [HeaderSize]byte
}

// NewReader returns a Reader that rejects payloads larger than max bytes
// (DefaultMaxFrame when max <= 0).
func NewReader(r io.Reader, max int) *Reader {
	if max <= 0 {
		max = DefaultMaxFrame
	}
	return &Reader{r: r, max: max}
}

// Next returns the next frame's payload. It returns io.EOF at a clean end of stream
// (between frames) and ErrTruncated when the stream ends inside a frame. After
// ErrTooLarge the stream is out of sync and must be abandoned.
func (fr *Reader) Next() ([]byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		if err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("reading frame header: %w", ErrTruncated)
		}
		return nil, fmt.Errorf("reading frame header: %w", err)
	}
	n := binary.BigEndian.Uint32(fr.hdr[:])
	if uint64(n) > uint64(fr.max) {
		return nil, fmt.Errorf("frame of %d bytes (cap %d): %w", n, fr.max, ErrTooLarge)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(fr.r, buf); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("reading %d-byte frame body: %w", n, ErrTruncated)
		}
		return nil, fmt.Errorf("reading %d-byte frame body: %w", n, err)
	}
	return buf, nil
}

// Cut takes the first whole frame off buf, for callers that read a stream in chunks
// (the supervisor reads non-blocking sockets). It returns the frame's payload (a slice
// of buf) and what follows it; a nil payload and buf itself when buf does not hold a
// whole frame yet; ErrTooLarge as soon as the header announces a payload over max
// (DefaultMaxFrame when max <= 0): the stream is then out of sync.
func Cut(buf []byte, max int) (payload, rest []byte, err error) {
	if max <= 0 {
		max = DefaultMaxFrame
	}
	if len(buf) < HeaderSize {
		return nil, buf, nil
	}
	n := binary.BigEndian.Uint32(buf)
	if uint64(n) > uint64(max) {
		return nil, buf, fmt.Errorf("frame of %d bytes (cap %d): %w", n, max, ErrTooLarge)
	}
	end := HeaderSize + int(n)
	if len(buf) < end {
		return nil, buf, nil
	}
	return buf[HeaderSize:end:end], buf[end:], nil
}

// Append appends payload as one frame to dst.
func Append(dst, payload []byte) ([]byte, error) {
	if uint64(len(payload)) > uint64(^uint32(0)) {
		return dst, fmt.Errorf("payload of %d bytes: %w", len(payload), ErrTooLarge)
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	return append(dst, payload...), nil
}

// Schema says which frame types exist and which fields each must carry.
// A field listed with a kind must be present with that kind; extra fields are allowed
// so that newer Python code can add fields without breaking an older supervisor.
type Schema map[string]map[string]Kind

// Kind is the msgpack kind a field must decode to.
type Kind int

// Kinds a Schema can require.
const (
	String Kind = iota
	Int
	Bytes
	Bool
	Map
	List
	Any
	Number // int or float
)

func (k Kind) String() string {
	return [...]string{"string", "int", "bytes", "bool", "map", "list", "any", "number"}[k]
}

func (k Kind) matches(v any) bool {
	switch k {
	case String:
		_, ok := v.(string)
		return ok
	case Int:
		switch v.(type) {
		case int64, uint64:
			return true
		}
		return false
	case Bytes:
		_, ok := v.([]byte)
		return ok
	case Bool:
		_, ok := v.(bool)
		return ok
	case Map:
		_, ok := v.(map[string]any)
		n, nested := v.(Nested)
		return ok || nested && n.Map
	case List:
		_, ok := v.([]any)
		n, nested := v.(Nested)
		return ok || nested && !n.Map
	case Number:
		switch v.(type) {
		case int64, uint64, float64:
			return true
		}
		return false
	}
	return true
}

// Decode parses one payload and validates it against the schema. The payload is
// validated in full, but only the top-level fields are built: a map or array among
// them comes back as a Nested.
func (s Schema) Decode(payload []byte) (Message, error) {
	d := decoder{b: payload, shallow: true}
	top, err := d.value(0)
	if err != nil {
		return Message{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	fields, _ := top.(map[string]any)
	if fields == nil {
		return Message{}, fmt.Errorf("%w: payload is not a map", ErrMalformed)
	}
	if d.remaining() > 0 {
		return Message{}, fmt.Errorf("%w: %d trailing bytes after the map", ErrMalformed, d.remaining())
	}
	t, ok := fields["t"].(string)
	if !ok {
		return Message{}, fmt.Errorf("%w: missing string field \"t\"", ErrMalformed)
	}
	want, ok := s[t]
	if !ok {
		return Message{}, fmt.Errorf("%w: %q", ErrUnknown, truncate(t, 64))
	}
	for name, kind := range want {
		v, present := fields[name]
		if !present {
			return Message{}, fmt.Errorf("%w: %q frame lacks field %q", ErrMalformed, t, name)
		}
		if !kind.matches(v) {
			return Message{}, fmt.Errorf("%w: %q frame field %q is %T, want %s", ErrMalformed, t, name, v, kind)
		}
	}
	return Message{Type: t, Fields: fields}, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// DecodeValue decodes one msgpack value from untrusted input with the same bounds as
// Schema.Decode, without requiring a schema.
func DecodeValue(payload []byte) (any, error) {
	d := decoder{b: payload}
	v, err := d.value(0)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if d.remaining() > 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, d.remaining())
	}
	return v, nil
}
