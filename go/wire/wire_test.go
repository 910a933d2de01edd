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
	if _, ok := m.Fields["extra"].(map[string]any); !ok {
		t.Fatalf("nested map decoded as %T, want map[string]any", m.Fields["extra"])
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
