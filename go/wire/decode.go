package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// MaxDepth bounds nesting of arrays and maps: deep nesting costs stack, and no frame we
// send nests more than a few levels.
const MaxDepth = 64

var errShort = errors.New("unexpected end of data")

// decoder is a msgpack decoder for untrusted input. The msgpack library sizes slices
// and maps from their declared length (a 5-byte array32 header can make it allocate
// 64 GiB), so this one checks every declared length against the bytes that remain
// before allocating. Values decode to: nil, bool, int64, uint64, float64, string,
// []byte, []any, map[string]any. Extension types are rejected.
type decoder struct {
	b   []byte
	off int
	// shallow: validate what is nested in the top-level value without building it:
	// its maps and arrays become Nested, its strings and bins empty (Schema.Decode).
	shallow bool
}

// Nested stands for a map or array inside a frame's top-level map, which Schema.Decode
// validates but does not build: the supervisor reads no nested field (reports are
// kept as the frame's bytes), and building a report's maps and strings was a third of
// the time spent decoding it.
type Nested struct {
	Map bool // a map (else an array)
	Len int
}

func (d *decoder) remaining() int { return len(d.b) - d.off }

func (d *decoder) take(n int) ([]byte, error) {
	if n < 0 || n > d.remaining() {
		return nil, fmt.Errorf("need %d bytes, %d left: %w", n, d.remaining(), errShort)
	}
	p := d.b[d.off : d.off+n]
	d.off += n
	return p, nil
}

func (d *decoder) uint(n int) (uint64, error) {
	p, err := d.take(n)
	if err != nil {
		return 0, err
	}
	switch n {
	case 1:
		return uint64(p[0]), nil
	case 2:
		return uint64(binary.BigEndian.Uint16(p)), nil
	case 4:
		return uint64(binary.BigEndian.Uint32(p)), nil
	}
	return binary.BigEndian.Uint64(p), nil
}

// length reads an n-byte length and checks that at least min*length bytes remain.
func (d *decoder) length(n, min int) (int, error) {
	v, err := d.uint(n)
	if err != nil {
		return 0, err
	}
	if v > uint64(d.remaining()/min) {
		return 0, fmt.Errorf("declared length %d exceeds the %d bytes left", v, d.remaining())
	}
	return int(v), nil
}

func (d *decoder) value(depth int) (any, error) {
	if depth > MaxDepth {
		return nil, fmt.Errorf("nesting deeper than %d", MaxDepth)
	}
	cb, err := d.take(1)
	if err != nil {
		return nil, err
	}
	c := cb[0]
	switch {
	case c <= 0x7f:
		return int64(c), nil
	case c >= 0xe0:
		return int64(int8(c)), nil
	case c >= 0x80 && c <= 0x8f:
		return d.mapBody(int(c&0x0f), depth)
	case c >= 0x90 && c <= 0x9f:
		return d.arrayBody(int(c&0x0f), depth)
	case c >= 0xa0 && c <= 0xbf:
		return d.str(int(c&0x1f), depth)
	}
	switch c {
	case 0xc0:
		return nil, nil
	case 0xc2:
		return false, nil
	case 0xc3:
		return true, nil
	case 0xc4, 0xc5, 0xc6: // bin 8/16/32
		n, err := d.length(1<<(c-0xc4), 1)
		if err != nil {
			return nil, err
		}
		p, err := d.take(n)
		if err != nil {
			return nil, err
		}
		if d.skim(depth) {
			return []byte{}, nil
		}
		// A copy, never nil: an empty bin must stay an empty bin, not become nil.
		return append(make([]byte, 0, len(p)), p...), nil
	case 0xca:
		v, err := d.uint(4)
		return float64(math.Float32frombits(uint32(v))), err
	case 0xcb:
		v, err := d.uint(8)
		return math.Float64frombits(v), err
	case 0xcc, 0xcd, 0xce, 0xcf: // uint 8/16/32/64
		v, err := d.uint(1 << (c - 0xcc))
		if err != nil {
			return nil, err
		}
		if v <= math.MaxInt64 {
			return int64(v), nil
		}
		return v, nil
	case 0xd0, 0xd1, 0xd2, 0xd3: // int 8/16/32/64
		n := 1 << (c - 0xd0)
		v, err := d.uint(n)
		if err != nil {
			return nil, err
		}
		shift := 64 - 8*n
		return int64(v<<shift) >> shift, nil
	case 0xd9, 0xda, 0xdb: // str 8/16/32
		n, err := d.length(1<<(c-0xd9), 1)
		if err != nil {
			return nil, err
		}
		return d.str(n, depth)
	case 0xdc, 0xdd: // array 16/32
		n, err := d.length(2<<(c-0xdc), 1)
		if err != nil {
			return nil, err
		}
		return d.arrayBody(n, depth)
	case 0xde, 0xdf: // map 16/32
		n, err := d.length(2<<(c-0xde), 2)
		if err != nil {
			return nil, err
		}
		return d.mapBody(n, depth)
	}
	return nil, fmt.Errorf("unsupported msgpack code 0x%02x", c)
}

// skim says whether a value at depth is validated only (see decoder.shallow).
func (d *decoder) skim(depth int) bool { return d.shallow && depth > 1 }

func (d *decoder) str(n, depth int) (string, error) {
	p, err := d.take(n)
	if d.skim(depth) {
		return "", err
	}
	return string(p), err
}

func (d *decoder) arrayBody(n, depth int) (any, error) {
	if n > d.remaining() {
		return nil, fmt.Errorf("array of %d in %d bytes: %w", n, d.remaining(), errShort)
	}
	skim := d.skim(depth + 1)
	var out []any
	if !skim {
		out = make([]any, n)
	}
	for i := 0; i < n; i++ {
		v, err := d.value(depth + 1)
		if err != nil {
			return nil, fmt.Errorf("array item %d: %w", i, err)
		}
		if !skim {
			out[i] = v
		}
	}
	if skim {
		return Nested{Len: n}, nil
	}
	return out, nil
}

func (d *decoder) mapBody(n, depth int) (any, error) {
	if n > d.remaining()/2 {
		return nil, fmt.Errorf("map of %d in %d bytes: %w", n, d.remaining(), errShort)
	}
	skim := d.skim(depth + 1)
	var out map[string]any
	if !skim {
		out = make(map[string]any, n)
	}
	for i := 0; i < n; i++ {
		k, err := d.value(depth + 1)
		if err != nil {
			return nil, fmt.Errorf("map key %d: %w", i, err)
		}
		ks, ok := k.(string)
		if !ok {
			return nil, fmt.Errorf("map key %d is %T, want string", i, k)
		}
		v, err := d.value(depth + 1)
		if err != nil {
			return nil, fmt.Errorf("map value for %q: %w", truncate(ks, 64), err)
		}
		if !skim {
			out[ks] = v
		}
	}
	if skim {
		return Nested{Map: true, Len: n}, nil
	}
	return out, nil
}
