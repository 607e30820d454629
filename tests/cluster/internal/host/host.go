// Package host runs the privileged network commands of the test cluster (iproute2's `ip`): as
// root directly, otherwise through `sudo -n`, and says plainly what is missing when neither works.
package host

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Privileged returns argv prefixed with `sudo -n` when this process is not root.
func Privileged(argv ...string) []string {
	if os.Geteuid() == 0 {
		return argv
	}
	return append([]string{"sudo", "-n"}, argv...)
}

// IP runs `ip ARGS...` with root privileges and returns its standard output.
func IP(args ...string) (string, error) {
	argv := Privileged(append([]string{"ip"}, args...)...)
	cmd := exec.Command(argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if os.Geteuid() != 0 {
			return "", fmt.Errorf("`ip %s` failed: %s (%v). The test cluster gives each Pod a network namespace, "+
				"which needs root: run as root, or allow this user passwordless sudo for ip", strings.Join(args, " "), msg, err)
		}
		return "", fmt.Errorf("`ip %s` failed: %s (%v)", strings.Join(args, " "), msg, err)
	}
	return stdout.String(), nil
}

// Namespaces lists the network namespaces whose names start with prefix.
func Namespaces(prefix string) []string {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 0 && strings.HasPrefix(fields[0], prefix) {
			names = append(names, fields[0])
		}
	}
	return names
}

// RemoveNamespace kills every process left in the network namespace, then deletes it (and with
// it the Pod's end of its veth pair, which takes the host's end along).
func RemoveNamespace(name string) {
	if out, err := IP("netns", "pids", name); err == nil {
		for _, pid := range strings.Fields(out) {
			argv := Privileged("kill", "-KILL", pid)
			_ = exec.Command(argv[0], argv[1:]...).Run()
		}
	}
	_, _ = IP("netns", "del", name)
}
