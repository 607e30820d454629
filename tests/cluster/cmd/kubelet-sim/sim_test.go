package main

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
)

func TestAllocateSkipsReservedAddressesAndGoesRound(t *testing.T) {
	n := newPodNetwork("br", netip.MustParsePrefix("10.244.7.0/29"), "p-")
	// a /29 has .0 (network), .1 (gateway), .7 (broadcast): five Pod addresses
	var got []string
	for i := 0; i < 5; i++ {
		a, err := n.allocate(types.UID(rune('a' + i)))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a.String())
	}
	if strings.Join(got, " ") != "10.244.7.2 10.244.7.3 10.244.7.4 10.244.7.5 10.244.7.6" {
		t.Fatalf("allocated %v", got)
	}
	if _, err := n.allocate("f"); err == nil {
		t.Fatal("a sixth Pod got an address of a full /29")
	}
	// a released address is handed out again only when the search comes round to it
	n.release(netip.MustParseAddr("10.244.7.3"))
	n.release(netip.MustParseAddr("10.244.7.5"))
	a, _ := n.allocate("g")
	b, _ := n.allocate("h")
	if a.String() != "10.244.7.3" || b.String() != "10.244.7.5" {
		t.Fatalf("after the end of the subnet the search starts over: got %s, %s", a, b)
	}
}

func TestAllocateDoesNotReuseAnAddressAtOnce(t *testing.T) {
	n := newPodNetwork("br", netip.MustParsePrefix("10.244.0.0/24"), "p-")
	a, _ := n.allocate("a")
	n.release(a)
	b, _ := n.allocate("b")
	if a == b {
		t.Fatalf("%s was handed out again right after its Pod stopped", a)
	}
}

func TestNamesFitInterfaceNames(t *testing.T) {
	n := newPodNetwork("br", netip.MustParsePrefix("10.244.0.0/24"), "wpod-0123abcd-")
	netns, veth := n.names("3f2a9c1e-8b7d-4e6f-a5b4-c3d2e1f0a9b8")
	if netns != "wpod-0123abcd-3f2a9c1e8b7d" || veth != "wv3f2a9c1e8b7d" {
		t.Fatalf("names %q %q", netns, veth)
	}
	// the veth's peer gets one more byte before it is renamed eth0
	if len(veth+"p") > 15 {
		t.Fatalf("%q is longer than an interface name may be", veth+"p")
	}
}

func TestMountPathsAreRewrittenToTheVolume(t *testing.T) {
	c := &corev1.Container{VolumeMounts: []corev1.VolumeMount{
		{Name: "certs", MountPath: "/etc/secret-volume"},
		{Name: "nested", MountPath: "/etc/secret-volume/ca/"},
	}}
	m := mountsFor(c, map[string]string{"certs": "/state/v/certs", "nested": "/state/v/nested"})
	for in, want := range map[string]string{
		"/etc/secret-volume/crt":     "/state/v/certs/crt",
		"/etc/secret-volume":         "/state/v/certs",
		"/etc/secret-volume/ca/x":    "/state/v/nested/x",
		"/etc/secret-volumeX/crt":    "/etc/secret-volumeX/crt",
		"relative/etc/secret-volume": "relative/etc/secret-volume",
	} {
		if got := m.rewrite(in); got != want {
			t.Errorf("rewrite(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEnvResolvesDownwardAPIReferencesAndSecrets(t *testing.T) {
	client := fake.NewSimpleClientset(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "ns"},
		Data:       map[string][]byte{"token": []byte("t0k")},
	})
	k := &kubelet{client: client}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-abc", Namespace: "ns", Labels: map[string]string{"app": "echo"}},
		Status:     corev1.PodStatus{PodIP: "10.244.0.9"},
	}
	c := &corev1.Container{
		VolumeMounts: []corev1.VolumeMount{{Name: "certs", MountPath: "/etc/certs"}},
		Env: []corev1.EnvVar{
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
			{Name: "APP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}}},
			{Name: "URL", Value: "http://$(POD_IP):3000/$(MISSING)"},
			{Name: "TOKEN", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "token"}}},
			{Name: "CERT", Value: "/etc/certs/tls.crt"},
		},
	}
	m := mountsFor(c, map[string]string{"certs": "/state/certs"})
	env, err := k.env(context.Background(), pod, c, m)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		got[k] = v
	}
	for k, want := range map[string]string{
		"POD_NAME": "echo-abc", "POD_IP": "10.244.0.9", "APP": "echo",
		"URL": "http://10.244.0.9:3000/$(MISSING)", "TOKEN": "t0k", "CERT": "/state/certs/tls.crt",
		"HOSTNAME": "echo-abc",
	} {
		if got[k] != want {
			t.Errorf("%s = %q, want %q", k, got[k], want)
		}
	}
	if _, err := k.env(context.Background(), pod, &corev1.Container{Env: []corev1.EnvVar{{Name: "X",
		ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.unknown"}}}}}, nil); err == nil {
		t.Error("an unsupported fieldPath is an error, not an empty value")
	}
}

func TestImagesMapToProgramsOrTheStandIn(t *testing.T) {
	k := &kubelet{self: "/bin/kubelet-sim", images: imageFlag{"gateway-api/echo-basic": "/bin/echo-basic"}}
	for image, want := range map[string]string{
		"registry.k8s.io/gateway-api/echo-basic:v1.5.1":              "/bin/echo-basic",
		"gcr.io/k8s-staging-gateway-api/echo-basic:v20240412-v1.0.0": "/bin/echo-basic",
		"registry.k8s.io/coredns/coredns:v1.12.0":                    "/bin/kubelet-sim",
	} {
		bin, standIn := k.programFor(&corev1.Container{Image: image})
		if bin != want || standIn != (want == "/bin/kubelet-sim") {
			t.Errorf("%s runs %s (stand-in %v), want %s", image, bin, standIn, want)
		}
	}
}

func TestVolumeItemsNameKeysThatMustExist(t *testing.T) {
	data := map[string][]byte{"tls.crt": []byte("C"), "tls.key": []byte("K")}
	items := []corev1.KeyToPath{{Key: "tls.crt", Path: "crt"}, {Key: "tls.key", Path: "key"}}
	files, err := projectItems(data, items, nil)
	if err != nil || string(files["crt"]) != "C" || string(files["key"]) != "K" || len(files) != 2 {
		t.Fatalf("files %v, err %v", files, err)
	}
	if _, err := projectItems(map[string][]byte{"crt": []byte("C")}, items, nil); err == nil ||
		!strings.Contains(err.Error(), `no key "tls.crt"`) {
		t.Fatalf("a missing key fails the mount, got %v", err)
	}
	optional := true
	if files, err := projectItems(map[string][]byte{}, items, &optional); err != nil || len(files) != 0 {
		t.Fatalf("an optional volume mounts without its keys: %v %v", files, err)
	}
}
