package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// installCRDs applies every manifest in dirs with server-side apply (as `kubectl apply
// --server-side` does), then waits until each CustomResourceDefinition is Established.
func installCRDs(cfg *rest.Config, dirs []string) error {
	cfg = rest.CopyConfig(cfg)
	cfg.WarningHandler = warnings{}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	ctx := context.Background()

	var objs []*unstructured.Unstructured
	for _, dir := range dirs {
		files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
		if err != nil {
			return err
		}
		if len(files) == 0 {
			return fmt.Errorf("no CRD manifests in %s", dir)
		}
		sort.Strings(files)
		for _, file := range files {
			docs, err := readManifests(file)
			if err != nil {
				return err
			}
			objs = append(objs, docs...)
		}
	}

	// all at once: the apiserver sets up each CRD's storage and OpenAPI on its own, and one after
	// the other took seconds of every `up`
	var crds []string
	errs := make([]error, len(objs))
	var wg sync.WaitGroup
	for i, obj := range objs {
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("%s %s: %w", gvk, obj.GetName(), err)
		}
		if gvk.Kind == "CustomResourceDefinition" {
			crds = append(crds, obj.GetName())
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			data, err := obj.MarshalJSON()
			if err == nil {
				force := true
				_, err = dyn.Resource(m.Resource).Patch(ctx, obj.GetName(), types.ApplyPatchType, data,
					metav1.PatchOptions{FieldManager: "weir-cluster", Force: &force})
			}
			if err != nil {
				errs[i] = fmt.Errorf("apply %s %s: %w", gvk.Kind, obj.GetName(), err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}

	crdResource := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	deadline := time.Now().Add(bringUpTimeout)
	for _, name := range crds {
		for {
			u, err := dyn.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
			if err == nil && established(u) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("CRD %s not Established within %s", name, bringUpTimeout)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

func established(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == string(apiextensionsv1.Established) && m["status"] == "True" {
			return true
		}
	}
	return false
}

// readManifests splits a multi-document YAML file into objects, skipping empty documents.
func readManifests(file string) ([]*unstructured.Unstructured, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		if len(obj) == 0 || strings.TrimSpace(fmt.Sprint(obj["kind"])) == "" {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: obj})
	}
}

// warnings passes the apiserver's warnings on (an unknown schema format in a CRD, say) as
// progress lines, once each.
type warnings struct{}

var (
	warnedMu sync.Mutex
	warned   = map[string]bool{}
)

func (warnings) HandleWarningHeader(_ int, _ string, text string) {
	warnedMu.Lock()
	defer warnedMu.Unlock()
	if !warned[text] {
		warned[text] = true
		progress("apiserver warning: %s", text)
	}
}
