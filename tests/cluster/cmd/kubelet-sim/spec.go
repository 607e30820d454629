package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"
)

// program is what kubelet-sim runs for one container.
type program struct {
	argv    []string
	env     []string
	standIn bool // the pause stand-in: Ready once started, probes not applied
}

// programFor maps a container's image to a program: a --image mapping (the real echo-basic for
// the Gateway API's echo image), else the pause stand-in.
func (k *kubelet) programFor(c *corev1.Container) (string, bool) {
	// longest fragment first, so a more specific mapping wins
	frags := make([]string, 0, len(k.images))
	for f := range k.images {
		frags = append(frags, f)
	}
	sort.Slice(frags, func(i, j int) bool { return len(frags[i]) > len(frags[j]) })
	for _, f := range frags {
		if strings.Contains(c.Image, f) {
			return k.images[f], false
		}
	}
	return k.self, true
}

// volumes writes the Pod's Secret, ConfigMap and downward API volumes under dir and returns
// each volume's directory by name. A Secret or ConfigMap that does not exist yet is an error,
// so the Pod waits for it (as a kubelet's ContainerCreating does), unless it is optional.
func (k *kubelet) volumes(ctx context.Context, pod *corev1.Pod, dir string) (map[string]string, error) {
	paths := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		path := filepath.Join(dir, "volumes", v.Name)
		var files map[string][]byte
		switch {
		case v.Secret != nil:
			s, err := k.client.CoreV1().Secrets(pod.Namespace).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
			if err != nil {
				if v.Secret.Optional != nil && *v.Secret.Optional {
					break
				}
				return nil, fmt.Errorf("volume %s: Secret %s: %w", v.Name, v.Secret.SecretName, err)
			}
			if files, err = projectItems(s.Data, v.Secret.Items, v.Secret.Optional); err != nil {
				return nil, fmt.Errorf("volume %s: Secret %s: %w", v.Name, v.Secret.SecretName, err)
			}
		case v.ConfigMap != nil:
			cm, err := k.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				if v.ConfigMap.Optional != nil && *v.ConfigMap.Optional {
					break
				}
				return nil, fmt.Errorf("volume %s: ConfigMap %s: %w", v.Name, v.ConfigMap.Name, err)
			}
			data := map[string][]byte{}
			for key, val := range cm.Data {
				data[key] = []byte(val)
			}
			for key, val := range cm.BinaryData {
				data[key] = val
			}
			if files, err = projectItems(data, v.ConfigMap.Items, v.ConfigMap.Optional); err != nil {
				return nil, fmt.Errorf("volume %s: ConfigMap %s: %w", v.Name, v.ConfigMap.Name, err)
			}
		case v.HostPath != nil:
			paths[v.Name] = v.HostPath.Path
			continue
		case v.EmptyDir != nil, v.Projected != nil, v.DownwardAPI != nil:
			// an empty directory; the projected service-account token is not needed by any
			// process here (none of them calls the apiserver)
		default:
			// other volume kinds get an empty directory too
		}
		if err := os.MkdirAll(path, 0o755); err != nil {
			return nil, err
		}
		for name, data := range files {
			file := filepath.Join(path, name)
			if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
				return nil, err
			}
			if err := os.WriteFile(file, data, 0o644); err != nil {
				return nil, err
			}
		}
		paths[v.Name] = path
	}
	return paths, nil
}

// projectItems picks the files a volume's items name (every key when it names none). A key
// that is not there fails the mount, as a kubelet's does, unless the volume is optional.
func projectItems(data map[string][]byte, items []corev1.KeyToPath, optional *bool) (map[string][]byte, error) {
	if len(items) == 0 {
		return data, nil
	}
	out := map[string][]byte{}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional != nil && *optional {
				continue
			}
			return nil, fmt.Errorf("it has no key %q", it.Key)
		}
		out[it.Path] = v
	}
	return out, nil
}

// mounts maps each of the container's mountPaths to the volume's directory. Pods share the host's
// filesystem, so a path under a mountPath in the container's env or args is rewritten to the
// same file under the Pod's own directory; the program reads what it would read in a container.
type mounts []struct{ at, dir string }

func mountsFor(c *corev1.Container, volumes map[string]string) mounts {
	var m mounts
	for _, vm := range c.VolumeMounts {
		dir, ok := volumes[vm.Name]
		if !ok {
			continue
		}
		if vm.SubPath != "" {
			dir = filepath.Join(dir, vm.SubPath)
		}
		m = append(m, struct{ at, dir string }{filepath.Clean(vm.MountPath), dir})
	}
	// the deepest mount wins
	sort.Slice(m, func(i, j int) bool { return len(m[i].at) > len(m[j].at) })
	return m
}

func (m mounts) rewrite(s string) string {
	for _, mt := range m {
		if s == mt.at || strings.HasPrefix(s, mt.at+"/") {
			return mt.dir + strings.TrimPrefix(s, mt.at)
		}
	}
	return s
}

// env resolves a container's environment as a kubelet does: envFrom, then env in order, with
// $(VAR) references to earlier variables expanded and the downward API's fields filled in.
func (k *kubelet) env(ctx context.Context, pod *corev1.Pod, c *corev1.Container, m mounts) ([]string, error) {
	vars := map[string]string{}
	var order []string
	set := func(name, value string) {
		if _, seen := vars[name]; !seen {
			order = append(order, name)
		}
		vars[name] = value
	}
	for _, from := range c.EnvFrom {
		var data map[string]string
		switch {
		case from.ConfigMapRef != nil:
			cm, err := k.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if from.ConfigMapRef.Optional != nil && *from.ConfigMapRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom ConfigMap %s: %w", from.ConfigMapRef.Name, err)
			}
			data = cm.Data
		case from.SecretRef != nil:
			s, err := k.client.CoreV1().Secrets(pod.Namespace).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if from.SecretRef.Optional != nil && *from.SecretRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom Secret %s: %w", from.SecretRef.Name, err)
			}
			data = map[string]string{}
			for key, v := range s.Data {
				data[key] = string(v)
			}
		}
		for key, v := range data {
			set(from.Prefix+key, v)
		}
	}
	mapping := expansion.MappingFuncFor(vars)
	for _, e := range c.Env {
		value := expansion.Expand(e.Value, mapping)
		if e.ValueFrom != nil {
			v, err := k.valueFrom(ctx, pod, c, e.ValueFrom)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			value = v
		}
		set(e.Name, m.rewrite(value))
	}
	out := []string{"PATH=" + os.Getenv("PATH"), "HOSTNAME=" + pod.Name}
	for _, name := range order {
		out = append(out, name+"="+vars[name])
	}
	return out, nil
}

func (k *kubelet) valueFrom(ctx context.Context, pod *corev1.Pod, c *corev1.Container, src *corev1.EnvVarSource) (string, error) {
	switch {
	case src.FieldRef != nil:
		return fieldValue(pod, src.FieldRef.FieldPath)
	case src.ResourceFieldRef != nil:
		res := c.Resources.Limits[corev1.ResourceName(strings.TrimPrefix(src.ResourceFieldRef.Resource, "limits."))]
		if res.IsZero() {
			return "1", nil
		}
		return res.String(), nil
	case src.SecretKeyRef != nil:
		s, err := k.client.CoreV1().Secrets(pod.Namespace).Get(ctx, src.SecretKeyRef.Name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		return string(s.Data[src.SecretKeyRef.Key]), nil
	case src.ConfigMapKeyRef != nil:
		cm, err := k.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, src.ConfigMapKeyRef.Name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		return cm.Data[src.ConfigMapKeyRef.Key], nil
	}
	return "", nil
}

// fieldValue is the downward API: the Pod fields a container's env may name.
func fieldValue(pod *corev1.Pod, path string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP", "status.hostIPs":
		return "127.0.0.1", nil
	case "status.podIP", "status.podIPs":
		return pod.Status.PodIP, nil
	}
	for _, p := range []struct {
		prefix string
		from   map[string]string
	}{{"metadata.labels['", pod.Labels}, {"metadata.annotations['", pod.Annotations}} {
		if strings.HasPrefix(path, p.prefix) && strings.HasSuffix(path, "']") {
			return p.from[strings.TrimSuffix(strings.TrimPrefix(path, p.prefix), "']")], nil
		}
	}
	return "", fmt.Errorf("fieldPath %q is not supported by kubelet-sim", path)
}

// argv is the container's command line: the mapped program, then the container's args with
// $(VAR) expanded and mount paths rewritten. A container `command` names an entrypoint inside
// the image, which has no meaning here, so only args are passed on.
func argv(bin string, c *corev1.Container, env []string, m mounts) []string {
	vars := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	mapping := expansion.MappingFuncFor(vars)
	out := []string{bin}
	for _, a := range c.Args {
		out = append(out, m.rewrite(expansion.Expand(a, mapping)))
	}
	return out
}
