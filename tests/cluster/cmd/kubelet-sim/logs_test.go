package main

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// base is the day the test logs are written; at is a time of it.
var base = time.Date(2026, 5, 4, 10, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return base.Add(d) }

// writeTestLog writes a container's run to path with a clock the test sets: lines of both
// streams, one arriving in two writes with a line of the other between, one too long for a
// record, and one the program does not end.
func writeTestLog(t *testing.T, path string) {
	t.Helper()
	l, err := openContainerLog(path)
	if err != nil {
		t.Fatal(err)
	}
	var now time.Time
	l.now = func() time.Time { return now }
	stdout, stderr := l.stream("stdout"), l.stream("stderr")
	for _, w := range []struct {
		at     time.Time
		stream interface{ Write([]byte) (int, error) }
		text   string
	}{
		{at(250 * time.Millisecond), stdout, "first\nsec"},
		{at(1500 * time.Millisecond), stderr, "an error\n"},
		{at(2 * time.Second), stdout, "ond\n"},
		{at(2*time.Second + 1), stdout, strings.Repeat("x", 2*maxRecord+5) + "\n"},
		{at(3 * time.Second), stdout, "last, unended"},
	} {
		now = w.at
		if _, err := w.stream.Write([]byte(w.text)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestLogRecordsAreTimedWholeLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	writeTestLog(t, path)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", maxRecord)
	want := strings.Join([]string{
		"2026-05-04T10:00:00.250000000Z stdout F first",
		// a line is timed when its end arrives, and written whole: the other stream's line first
		"2026-05-04T10:00:01.500000000Z stderr F an error",
		"2026-05-04T10:00:02.000000000Z stdout F second",
		"2026-05-04T10:00:02.000000001Z stdout P " + long,
		"2026-05-04T10:00:02.000000001Z stdout P " + long,
		"2026-05-04T10:00:02.000000001Z stdout F xxxxx",
		// Close records the end of the line the program left unended
		"2026-05-04T10:00:03.000000000Z stdout F last, unended",
	}, "\n") + "\n"
	if string(data) != want {
		t.Fatalf("log file:\n%.400s\nwant:\n%.400s", data, want)
	}
}

func TestLogReaderWaitsForWholeRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	if err := os.WriteFile(path, []byte("2026-05-04T10:00:00.000000000Z stdout F one\n2026-05-04T10:00:01.0"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lr := newLogReader(f)
	var got []string
	read := func() {
		for {
			l, err := lr.next()
			if err != nil {
				return
			}
			got = append(got, l.time.Format(time.RFC3339Nano)+" "+string(l.text))
		}
	}
	read()
	// the rest of the record arrives later, as a followed log's does
	app, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := app.WriteString("00000000Z stderr F two\n"); err != nil {
		t.Fatal(err)
	}
	app.Close()
	read()
	if strings.Join(got, "|") != "2026-05-04T10:00:00Z one|2026-05-04T10:00:01Z two" {
		t.Fatalf("lines %q", got)
	}
}

// flushHook calls onFlush at the handler's first Flush: when a followed log's first part is out.
type flushHook struct {
	*httptest.ResponseRecorder
	onFlush func()
}

func (h *flushHook) Flush() {
	if h.onFlush != nil {
		h.onFlush()
		h.onFlush = nil
	}
	h.ResponseRecorder.Flush()
}

func TestContainerLogsHonoursPodLogOptions(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "gateway-conformance-infra", Name: "echo", UID: "u1"}}
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	if err := indexer.Add(pod); err != nil {
		t.Fatal(err)
	}
	r := &podRunner{dir: t.TempDir(), done: make(chan struct{})}
	if err := os.MkdirAll(filepath.Join(r.dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeTestLog(t, r.logPath("echo"))
	k := &kubelet{pods: listersv1.NewPodLister(indexer), running: map[types.UID]*podRunner{pod.UID: r}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", k.containerLogs)
	get := func(query string, onFlush func()) (int, string) {
		w := &flushHook{ResponseRecorder: httptest.NewRecorder(), onFlush: onFlush}
		mux.ServeHTTP(w, httptest.NewRequest("GET", "/containerLogs/gateway-conformance-infra/echo/echo?"+query, nil))
		return w.Code, w.Body.String()
	}

	long := strings.Repeat("x", 2*maxRecord+5)
	for query, want := range map[string]string{
		"": "first\nan error\nsecond\n" + long + "\nlast, unended\n",
		// the apiserver sends sinceTime in seconds; a line written at it is in
		"sinceTime=" + url.QueryEscape("2026-05-04T10:00:02Z"): "second\n" + long + "\nlast, unended\n",
		"sinceTime=2026-05-04T10:00:02Z&tailLines=1":           "last, unended\n",
		"tailLines=2&timestamps=true": "2026-05-04T10:00:02.000000001Z " + long + "\n" +
			"2026-05-04T10:00:03Z last, unended\n",
		"sinceTime=2026-05-04T10:00:01Z&timestamps=true&tailLines=10": "2026-05-04T10:00:01.5Z an error\n" +
			"2026-05-04T10:00:02Z second\n2026-05-04T10:00:02.000000001Z " + long + "\n2026-05-04T10:00:03Z last, unended\n",
		"tailLines=0":                    "",
		"sinceTime=2026-05-04T11:00:00Z": "",
	} {
		code, body := get(query, nil)
		if code != http.StatusOK || body != want {
			t.Errorf("?%s: %d\n%.200q\nwant\n%.200q", query, code, body, want)
		}
	}
	for _, query := range []string{"tailLines=-1", "sinceTime=yesterday", "timestamps=maybe", "sinceSeconds=x"} {
		if code, _ := get(query, nil); code != http.StatusBadRequest {
			t.Errorf("?%s: %d, want 400", query, code)
		}
	}

	// following: the tail, then a later run's lines until the Pod has stopped
	code, body := get("follow=true&tailLines=1&timestamps=true", func() {
		l, err := openContainerLog(r.logPath("echo"))
		if err != nil {
			t.Fatal(err)
		}
		l.now = func() time.Time { return at(time.Minute) }
		_, _ = l.stream("stdout").Write([]byte("restarted\n"))
		_ = l.Close()
		close(r.done)
	})
	if want := "2026-05-04T10:00:03Z last, unended\n2026-05-04T10:01:00Z restarted\n"; code != http.StatusOK || body != want {
		t.Fatalf("followed: %d %q, want %q", code, body, want)
	}
}

func TestLogOptionsFromTheQuery(t *testing.T) {
	now := at(time.Hour)
	for query, want := range map[string]logOptions{
		"":                                     {tail: -1},
		"sinceSeconds=60":                      {since: at(59 * time.Minute), tail: -1},
		"follow=1&tailLines=3&timestamps=true": {tail: 3, follow: true, timestamps: true},
		// both (which the apiserver refuses): the later wins, as in a kubelet
		"sinceSeconds=60&sinceTime=2026-05-04T10:30:00Z":   {since: at(59 * time.Minute), tail: -1},
		"sinceSeconds=7200&sinceTime=2026-05-04T10:30:00Z": {since: at(30 * time.Minute), tail: -1},
	} {
		q, _ := url.ParseQuery(query)
		got, err := parseLogOptions(q, now)
		if err != nil || !got.since.Equal(want.since) || got.tail != want.tail ||
			got.follow != want.follow || got.timestamps != want.timestamps {
			t.Errorf("?%s: %+v %v, want %+v", query, got, err, want)
		}
	}
}

func TestProgramOutputReachesTheLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	l, err := openContainerLog(path)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", `printf 'out\n'; printf 'err\n' >&2; printf 'no newline'`)
	l.attach(cmd)
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, rec := range strings.SplitAfter(strings.TrimSuffix(string(data), "\n"), "\n") {
		_, stream, tag, text, ok := parseRecord([]byte(rec))
		if !ok || tag != "F" {
			t.Fatalf("record %q", rec)
		}
		got[string(text)] = stream
	}
	if len(got) != 3 || got["out"] != "stdout" || got["err"] != "stderr" || got["no newline"] != "stdout" {
		t.Fatalf("log %q", data)
	}
}
