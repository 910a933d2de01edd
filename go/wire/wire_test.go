package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

var testSchema = Schema{
	"report": {"nodeid": String, "data": Bytes},
	"ping":   {},
}

func pack(t testing.TB, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReaderRoundTrip(t *testing.T) {
	var stream []byte
	payloads := [][]byte{[]byte("a"), {}, bytes.Repeat([]byte("x"), 70000)}
	for _, p := range payloads {
		var err error
		if stream, err = Append(stream, p); err != nil {
			t.Fatal(err)
		}
	}
	r := NewReader(bytes.NewReader(stream), 0)
	for i, want := range payloads {
		got, err := r.Next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("frame %d: got %d bytes, want %d", i, len(got), len(want))
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("after last frame: got %v, want io.EOF", err)
	}
}

func TestReaderErrors(t *testing.T) {
	big := binary.BigEndian.AppendUint32(nil, 1<<30)
	cases := map[string]struct {
		stream []byte
		max    int
		want   error
	}{
		"too large":        {big, 1 << 20, ErrTooLarge},
		"short header":     {[]byte{0, 0}, 0, ErrTruncated},
		"short body":       {append(binary.BigEndian.AppendUint32(nil, 10), 1, 2, 3), 0, ErrTruncated},
		"exactly over cap": {append(binary.BigEndian.AppendUint32(nil, 5), 1, 2, 3, 4, 5), 4, ErrTooLarge},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := NewReader(bytes.NewReader(c.stream), c.max).Next()
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func TestDecodeValid(t *testing.T) {
	m, err := testSchema.Decode(pack(t, map[string]any{
		"t": "report", "nodeid": "a.py::t", "data": []byte{1}, "extra": map[string]any{"k": []any{1, "x"}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != "report" || m.Fields["nodeid"] != "a.py::t" {
		t.Fatalf("unexpected message %#v", m)
	}
	if b, ok := m.Fields["data"].([]byte); !ok || len(b) != 1 {
		t.Fatalf("data decoded as %#v", m.Fields["data"])
	}
	v, err := DecodeValue(pack(t, map[string]any{"extra": map[string]any{"k": []any{1, "x"}}}))
	if extra, ok := v.(map[string]any)["extra"].(map[string]any); err != nil || !ok || len(extra["k"].([]any)) != 2 {
		t.Fatalf("DecodeValue builds nested values: got %#v, %v", v, err)
	}
}

func TestDecodeBuildsTopLevelFieldsOnly(t *testing.T) {
	m, err := testSchema.Decode(pack(t, map[string]any{
		"t": "report", "nodeid": "a", "data": []byte{1}, "extra": map[string]any{"k": []any{1, "x"}}, "list": []any{"y"},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Fields["extra"]; got != (Nested{Map: true, Len: 1}) {
		t.Fatalf("extra = %#v", got)
	}
	if got := m.Fields["list"]; got != (Nested{Len: 1}) || !List.matches(got) || Map.matches(got) {
		t.Fatalf("list = %#v", got)
	}
	// What is nested is still validated.
	// {"t": "ping", "extra": {"k": 0xc1}}: 0xc1 is never used in msgpack.
	bad := append([]byte{0x82, 0xa1, 't', 0xa4, 'p', 'i', 'n', 'g', 0xa5, 'e', 'x', 't', 'r', 'a'}, 0x81, 0xa1, 'k', 0xc1)
	if _, err := testSchema.Decode(bad[:len(bad)-1]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a truncated nested map: got %v", err)
	}
	if _, err := testSchema.Decode(bad); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a bad nested value: got %v", err)
	}
}

func TestDecodeEmptyBinStaysBytes(t *testing.T) {
	v, err := DecodeValue(pack(t, map[string]any{"b": []byte{}}))
	if err != nil {
		t.Fatal(err)
	}
	if b, ok := v.(map[string]any)["b"].([]byte); !ok || b == nil {
		t.Fatalf("empty bin decoded as %#v", v.(map[string]any)["b"])
	}
}

func TestDecodeInvalid(t *testing.T) {
	map32Lie := []byte{0xdf, 0xff, 0xff, 0xff, 0xff} // map32 claiming 4 billion entries
	cases := map[string]struct {
		payload []byte
		want    error
	}{
		"empty":          {nil, ErrMalformed},
		"not a map":      {pack(t, []int{1, 2}), ErrMalformed},
		"nil":            {pack(t, nil), ErrMalformed},
		"no type":        {pack(t, map[string]any{"x": 1}), ErrMalformed},
		"type not str":   {pack(t, map[string]any{"t": 5}), ErrMalformed},
		"unknown type":   {pack(t, map[string]any{"t": "rm -rf"}), ErrUnknown},
		"missing field":  {pack(t, map[string]any{"t": "report", "nodeid": "x"}), ErrMalformed},
		"wrong kind":     {pack(t, map[string]any{"t": "report", "nodeid": 1, "data": []byte{}}), ErrMalformed},
		"trailing bytes": {append(pack(t, map[string]any{"t": "ping"}), 0xc0), ErrMalformed},
		"int key":        {pack(t, map[int]any{1: "x"}), ErrMalformed},
		"map32 lie":      {map32Lie, ErrMalformed},
		"truncated str":  {[]byte{0x81, 0xa1, 't', 0xa4, 'p'}, ErrMalformed},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := testSchema.Decode(c.payload)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

// FuzzDecode checks that no input makes the decoder panic, hang or accept a frame
// that violates the schema. Seeds live in testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	f.Add(pack(f, map[string]any{"t": "report", "nodeid": "x", "data": []byte("y")}))
	f.Add(pack(f, map[string]any{"t": "ping"}))
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, payload []byte) {
		m, err := testSchema.Decode(payload)
		// Decoding shallowly must accept exactly the msgpack a full decode accepts.
		full, shallow := decoder{b: payload}, decoder{b: payload, shallow: true}
		_, ferr := full.value(0)
		_, serr := shallow.value(0)
		if (ferr == nil) != (serr == nil) || full.off != shallow.off && ferr == nil {
			t.Fatalf("shallow: %v at %d; full: %v at %d", serr, shallow.off, ferr, full.off)
		}
		if err != nil {
			return
		}
		for name, kind := range testSchema[m.Type] {
			if !kind.matches(m.Fields[name]) {
				t.Fatalf("accepted %q with field %q of %T", m.Type, name, m.Fields[name])
			}
		}
	})
}

// FuzzReader checks framing over arbitrary streams: every frame returned respects the
// cap, and the reader always terminates with an error or EOF.
func FuzzReader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0xc0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, stream []byte) {
		r := NewReader(bytes.NewReader(stream), 64)
		for i := 0; i <= len(stream); i++ {
			p, err := r.Next()
			if err != nil {
				return
			}
			if len(p) > 64 {
				t.Fatalf("frame of %d bytes passed a 64-byte cap", len(p))
			}
		}
		t.Fatal("reader did not terminate")
	})
}

func TestCutWaitsForWholeFrames(t *testing.T) {
	stream, _ := Append(nil, []byte("abc"))
	stream, _ = Append(stream, nil)
	for i := 0; i < 7; i++ { // a header and less than a body: no frame yet
		p, rest, err := Cut(stream[:i], 0)
		if p != nil || err != nil || len(rest) != i {
			t.Fatalf("%d bytes: got %q, %d left, %v", i, p, len(rest), err)
		}
	}
	p, rest, err := Cut(stream, 0)
	if err != nil || string(p) != "abc" || len(rest) != HeaderSize {
		t.Fatalf("got %q, %d left, %v", p, len(rest), err)
	}
	if p, rest, err = Cut(rest, 0); err != nil || p == nil || len(p) != 0 || len(rest) != 0 {
		t.Fatalf("empty frame: got %v, %d left, %v", p, len(rest), err)
	}
	if _, _, err = Cut(binary.BigEndian.AppendUint32(nil, 5), 4); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over the cap: got %v", err)
	}
}

// FuzzCut checks that cutting a stream frame by frame, as the supervisor does with
// whatever its non-blocking reads return, yields exactly what Reader yields.
func FuzzCut(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0xc0, 0, 0, 0, 0}, uint8(3))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff}, uint8(1))
	f.Fuzz(func(t *testing.T, stream []byte, chunk uint8) {
		step := int(chunk%16) + 1
		r := NewReader(bytes.NewReader(stream), 64)
		var buf []byte
		for fed := 0; ; {
			p, rest, err := Cut(buf, 64)
			if err != nil {
				if _, rerr := r.Next(); !errors.Is(rerr, ErrTooLarge) {
					t.Fatalf("Cut: %v; Reader: %v", err, rerr)
				}
				return
			}
			if p != nil {
				want, rerr := r.Next()
				if rerr != nil || !bytes.Equal(p, want) {
					t.Fatalf("Cut gave %x; Reader gave %x, %v", p, want, rerr)
				}
				buf = rest
				continue
			}
			if fed == len(stream) {
				_, rerr := r.Next()
				if len(buf) == 0 && rerr != io.EOF || len(buf) > 0 && !errors.Is(rerr, ErrTruncated) {
					t.Fatalf("%d bytes left over; Reader: %v", len(buf), rerr)
				}
				return
			}
			next := min(fed+step, len(stream))
			buf = append(buf, stream[fed:next]...)
			fed = next
		}
	})
}
