package main

// Container logs are kept as a container runtime keeps them for a kubelet (the CRI logging
// format): one record a line, `TIME STREAM TAG TEXT`, TIME the moment the line arrived (RFC 3339
// with nanoseconds), STREAM stdout or stderr, TAG F for a line's end or P for a piece of a line
// too long for one record. The times are what lets containerLogs answer sinceTime, sinceSeconds
// and timestamps.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"
)

const (
	// recordTime is the records' time format: RFC 3339 at a fixed width, as containerd writes it
	recordTime = "2006-01-02T15:04:05.000000000Z07:00"
	// maxRecord is how much of a line one record holds (containerd's default)
	maxRecord = 16 * 1024
	// outputDelay is how long Wait goes on copying a container's output after the program exits:
	// a process it left running with the pipes open would otherwise hold up noticing the exit
	outputDelay = time.Second
	// followPoll is how often a followed log is read again for new lines
	followPoll = 200 * time.Millisecond
)

// containerLog is a container's log file while one run of it writes there. Its streams write
// each record under one lock, so stdout and stderr do not mix within a line.
type containerLog struct {
	mu      sync.Mutex
	out     io.WriteCloser
	now     func() time.Time
	streams []*logStream
	failed  bool // a write failed, which was logged once
}

func openContainerLog(path string) (*containerLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &containerLog{out: f, now: time.Now}, nil
}

// attach sends cmd's output to the log. Through pipes, not the file itself: exec copies from
// them into the streams, which time each line.
func (l *containerLog) attach(cmd *exec.Cmd) {
	cmd.Stdout, cmd.Stderr = l.stream("stdout"), l.stream("stderr")
	cmd.WaitDelay = outputDelay
}

func (l *containerLog) stream(name string) io.Writer {
	s := &logStream{log: l, name: name}
	l.streams = append(l.streams, s)
	return s
}

// Close records what is left of a line the program did not end, then closes the file. It comes
// after cmd.Wait, once nothing more is copied.
func (l *containerLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.streams {
		if len(s.line) > 0 {
			s.end()
		}
	}
	return l.out.Close()
}

// logStream is the writer of one of a container's streams.
type logStream struct {
	log  *containerLog
	name string
	line []byte // the start of a line that has not ended yet
}

// Write records every line that ends in p; the rest waits for its end. It never fails, so that a
// full disk does not break the program's output pipe.
func (s *logStream) Write(p []byte) (int, error) {
	s.log.mu.Lock()
	defer s.log.mu.Unlock()
	n := len(p)
	for {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			break
		}
		s.line = append(s.line, p[:i]...)
		s.end()
		p = p[i+1:]
	}
	s.line = append(s.line, p...)
	s.split()
	return n, nil
}

// end records the line so far as a whole one.
func (s *logStream) end() {
	s.split()
	s.record('F', s.line)
	s.line = s.line[:0]
}

// split records the full-size pieces of a line longer than one record.
func (s *logStream) split() {
	for len(s.line) > maxRecord {
		s.record('P', s.line[:maxRecord])
		s.line = s.line[maxRecord:]
	}
}

// record appends one record to the file, in a single write so that readers of the growing file
// find whole records followed at most by the start of one.
func (s *logStream) record(tag byte, text []byte) {
	rec := make([]byte, 0, len(recordTime)+len(s.name)+len(text)+5)
	rec = s.log.now().UTC().AppendFormat(rec, recordTime)
	rec = append(rec, ' ')
	rec = append(rec, s.name...)
	rec = append(rec, ' ', tag, ' ')
	rec = append(rec, text...)
	rec = append(rec, '\n')
	if _, err := s.log.out.Write(rec); err != nil && !s.log.failed {
		s.log.failed = true
		log.Printf("kubelet-sim: container log: %v (later lines may be lost too)", err)
	}
}

// logLine is one line of a container's output, at the time its first record was written.
type logLine struct {
	time time.Time
	text []byte
}

// logReader reads the lines of a log file, also while it grows: a record counts once its
// newline is there, and a line once its last record is.
type logReader struct {
	in     *bufio.Reader
	rest   []byte             // the start of a record, read before the rest was written
	pieces map[string]logLine // by stream: a line whose records so far were pieces (P)
}

func newLogReader(r io.Reader) *logReader {
	return &logReader{in: bufio.NewReader(r), pieces: map[string]logLine{}}
}

// next returns the next whole line, or io.EOF when the file has none more yet (a later call
// goes on from there).
func (lr *logReader) next() (logLine, error) {
	for {
		rec, err := lr.in.ReadBytes('\n')
		lr.rest = append(lr.rest, rec...)
		if err != nil {
			return logLine{}, err
		}
		rec, lr.rest = lr.rest, nil
		t, stream, tag, text, ok := parseRecord(rec)
		if !ok {
			// not a record (a log written before this format): left out, as a kubelet does
			continue
		}
		l, started := lr.pieces[stream]
		if !started {
			l.time = t
		}
		l.text = append(l.text, text...)
		if tag == "P" {
			lr.pieces[stream] = l
			continue
		}
		delete(lr.pieces, stream)
		return l, nil
	}
}

// parseRecord splits `TIME STREAM TAG TEXT\n`.
func parseRecord(rec []byte) (t time.Time, stream, tag string, text []byte, ok bool) {
	f := bytes.SplitN(bytes.TrimSuffix(rec, []byte("\n")), []byte(" "), 4)
	if len(f) != 4 {
		return t, "", "", nil, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(f[0]))
	return t, string(f[1]), string(f[2]), f[3], err == nil
}

// logOptions are the PodLogOptions a kubelet honours that containerLogs does too.
type logOptions struct {
	since      time.Time // lines written before it are left out (zero: none)
	timestamps bool      // each line starts with its time (RFC3339Nano) and a space
	tail       int       // only the last this many lines are written (-1: all), before following
	follow     bool      // then new lines as they come
}

// parseLogOptions reads the query as a kubelet does; of sinceSeconds and sinceTime (the
// apiserver lets only one through) the later counts.
func parseLogOptions(q url.Values, now time.Time) (logOptions, error) {
	opts := logOptions{tail: -1}
	var err error
	if v := q.Get("sinceSeconds"); v != "" {
		s, err := strconv.ParseInt(v, 10, 64)
		if err != nil || s < 0 {
			return opts, fmt.Errorf("sinceSeconds %q is not a number of seconds", v)
		}
		opts.since = now.Add(-time.Duration(s) * time.Second)
	}
	if v := q.Get("sinceTime"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return opts, fmt.Errorf("sinceTime: %w", err)
		}
		if t.After(opts.since) {
			opts.since = t
		}
	}
	if v := q.Get("tailLines"); v != "" {
		if opts.tail, err = strconv.Atoi(v); err != nil || opts.tail < 0 {
			return opts, fmt.Errorf("tailLines %q is not a number of lines", v)
		}
	}
	for name, dst := range map[string]*bool{"timestamps": &opts.timestamps, "follow": &opts.follow} {
		if v := q.Get(name); v != "" {
			if *dst, err = strconv.ParseBool(v); err != nil {
				return opts, fmt.Errorf("%s %q is not a boolean", name, v)
			}
		}
	}
	return opts, nil
}

// serveLogs answers a containerLogs request from the container's log file. With follow it goes on
// until the client leaves or the Pod has stopped (stopped closed), then with the last lines.
func serveLogs(w http.ResponseWriter, req *http.Request, f io.Reader, stopped <-chan struct{}) {
	opts, err := parseLogOptions(req.URL.Query(), time.Now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	lr := newLogReader(f)
	if err := writeLogs(w, lr, opts); err != nil || !opts.follow {
		return
	}
	opts.tail = -1 // from here on, every new line
	flusher, _ := w.(http.Flusher)
	poll := time.NewTicker(followPoll)
	defer poll.Stop()
	for {
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-req.Context().Done():
			return
		case <-stopped:
			_ = writeLogs(w, lr, opts)
			return
		case <-poll.C:
		}
		if err := writeLogs(w, lr, opts); err != nil {
			return
		}
	}
}

// writeLogs writes the lines opts selects of those lr has whole now. A tail is only known at the
// end, so until then it keeps the last lines.
func writeLogs(w io.Writer, lr *logReader, opts logOptions) error {
	var last []logLine
	for {
		l, err := lr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		switch {
		case l.time.Before(opts.since):
		case opts.tail < 0:
			if err := writeLine(w, l, opts.timestamps); err != nil {
				return err
			}
		default:
			if last = append(last, l); len(last) > opts.tail {
				last = last[1:]
			}
		}
	}
	for _, l := range last {
		if err := writeLine(w, l, opts.timestamps); err != nil {
			return err
		}
	}
	return nil
}

func writeLine(w io.Writer, l logLine, timestamps bool) error {
	var b []byte
	if timestamps {
		b = append(l.time.AppendFormat(b, time.RFC3339Nano), ' ')
	}
	b = append(append(b, l.text...), '\n')
	_, err := w.Write(b)
	return err
}
