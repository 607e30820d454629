//! Reading Kubernetes manifests: multi-document YAML to typed [`Object`]s, with every
//! problem reported as a [`Rejection`] naming the file.

use serde::de::DeserializeOwned;

use crate::store::{Object, Rejection};

/// Deepest nesting of flow collections (`[`, `{`) a manifest may have. A Kubernetes object
/// needs a few levels. The parser weir used before (serde_yaml_ng on libyaml) took time growing
/// with the square of the depth (a 200 KB file of `[[[...]]]` took 17 s); serde-saphyr is linear,
/// and this limit gives a deeper file one clear rejection before the parser reads it.
pub const MAX_NESTING: usize = 64;

/// How YAML is read: as `kubectl` reads it (YAML 1.1 scalars: `yes`/`on` are booleans, `017` is
/// octal), a duplicate key is an error (kubectl refuses it too), and errors fit on one line.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        // nesting by indentation, which the bracket scan does not see, stops at the same depth;
        // dir::MAX_FILE_SIZE bounds the input already
        budget: serde_saphyr::budget! { max_depth: MAX_NESTING, max_reader_input_bytes: None },
        // an alias bomb is refused after 100,000 replayed events (~40 ms), not the default million
        alias_limits: serde_saphyr::alias_limits! { max_total_replayed_events: 100_000 },
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        legacy_octal_numbers: true,
        with_snippet: false,
    }
}

/// The deepest `[`/`{` nesting in `text`, counting every bracket (quoted or not: an over-count
/// only refuses a file of many unbalanced brackets in strings). Linear, and stops at `limit`+1.
fn flow_depth(text: &str, limit: usize) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
                if max > limit {
                    return max;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parses every document of one YAML file. Good documents are returned even when others fail.
pub fn parse_manifests(text: &str, file: &str) -> (Vec<Object>, Vec<Rejection>) {
    let mut objects = vec![];
    let mut errors = vec![];
    let reject = |index: usize, kind: &str, ns: &str, name: &str, reason: String| Rejection {
        kind: kind.to_string(),
        namespace: ns.to_string(),
        name: name.to_string(),
        file: file.to_string(),
        reason: format!("document {}: {reason}", index + 1),
        served: false,
    };
    if flow_depth(text, MAX_NESTING) > MAX_NESTING {
        let reason = format!(
            "[ and {{ nest more than {MAX_NESTING} deep; weir does not read a file nested so deep (no manifest is)"
        );
        return (objects, vec![Rejection { reason, ..reject(0, "", "", "", String::new()) }]);
    }
    // Empty documents are skipped; one that does not parse is reported and the next one read,
    // unless the stream itself is broken (the iterator then ends).
    let mut input = text.as_bytes();
    let documents = serde_saphyr::read_with_options::<_, serde_json::Value>(&mut input, yaml_options());
    for (index, doc) in documents.enumerate() {
        let value = match doc {
            Ok(serde_json::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push(reject(index, "", "", "", format!("YAML does not parse: {e}")));
                continue;
            }
        };
        let str_at = |ptr: &str| value.pointer(ptr).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let (api_version, kind) = (str_at("/apiVersion"), str_at("/kind"));
        let (ns, name) = (str_at("/metadata/namespace"), str_at("/metadata/name"));
        if name.is_empty() {
            errors.push(reject(index, &kind, &ns, &name, "metadata.name is missing".into()));
            continue;
        }
        match to_object(&api_version, &kind, value.clone()) {
            Ok(o) => objects.push(o),
            Err(reason) => errors.push(reject(index, &kind, &ns, &name, reason)),
        }
    }
    (objects, errors)
}

fn typed<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| match e.path().to_string().as_str() {
        "." | "" => format!("does not match its schema: {}", e.inner()),
        path => format!("does not match its schema at {path}: {}", e.inner()),
    })
}

fn to_object(api_version: &str, kind: &str, value: serde_json::Value) -> Result<Object, String> {
    Ok(match (api_version, kind) {
        ("networking.k8s.io/v1", "Ingress") => Object::Ingress(typed(value)?),
        ("networking.k8s.io/v1", "IngressClass") => Object::IngressClass(typed(value)?),
        ("gateway.networking.k8s.io/v1", "GatewayClass") => Object::GatewayClass(typed(value)?),
        ("gateway.networking.k8s.io/v1", "Gateway") => Object::Gateway(typed(value)?),
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => Object::HttpRoute(typed(value)?),
        ("gateway.networking.k8s.io/v1", "GRPCRoute") => Object::GrpcRoute(typed(value)?),
        ("gateway.networking.k8s.io/v1", "TLSRoute") => Object::TlsRoute(typed(value)?),
        ("v1", "Service") => Object::Service(typed(value)?),
        ("v1", "Secret") => Object::Secret(typed(value)?),
        ("v1", "Namespace") => Object::Namespace(typed(value)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => Object::EndpointSlice(typed(value)?),
        ("weir.dev/v1alpha1", "BackendPolicy") => Object::BackendPolicy(typed(value)?),
        ("weir.dev/v1alpha1", "MeshAuthorization") => Object::MeshAuthorization(typed(value)?),
        ("gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1", "ReferenceGrant") => {
            Object::ReferenceGrant(typed(value)?)
        }
        ("", _) | (_, "") => return Err("apiVersion and kind are required".into()),
        _ => {
            return Err(format!(
                "{api_version} {kind} is not a kind weir reads; weir reads Ingress, IngressClass \
                 (networking.k8s.io/v1), GatewayClass, Gateway, HTTPRoute, GRPCRoute, TLSRoute, ReferenceGrant \
                 (gateway.networking.k8s.io/v1; ReferenceGrant also v1beta1), Service, Secret, Namespace (v1), EndpointSlice \
                 (discovery.k8s.io/v1), BackendPolicy and MeshAuthorization (weir.dev/v1alpha1)"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_documents_survive_bad_ones() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\n\
                    apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: \"nope\"}\n";
        let (objects, errors) = parse_manifests(text, "x.yaml");
        assert_eq!(objects.len(), 1);
        assert_eq!(errors.len(), 2);
        assert!(errors[0].reason.contains("not a kind weir reads"), "{}", errors[0].reason);
        assert_eq!(errors[1].name, "b");
        assert!(
            errors[1].reason.starts_with("document 3: does not match its schema at spec.ports: invalid type"),
            "{}",
            errors[1].reason
        );
        assert!(errors.iter().all(|e| e.file == "x.yaml"));
    }

    #[test]
    fn a_file_nested_too_deep_is_refused_before_it_is_parsed() {
        let deep = |n: usize| format!("x: {}{}\n", "[".repeat(n), "]".repeat(n));
        // 100,000 levels (200 KB): libyaml would take many seconds; the scan takes none
        let (objects, errors) = parse_manifests(&deep(100_000), "deep.yaml");
        assert!(objects.is_empty());
        assert_eq!(errors.len(), 1);
        let reason = &errors[0].reason;
        assert!(
            reason.contains("[ and { nest more than 64 deep; weir does not read a file nested so deep"),
            "{reason}"
        );
        assert_eq!(flow_depth(&deep(64), MAX_NESTING), 64);
        assert_eq!(flow_depth("a: \"[x]\"\nb: {c: [1, {d: 2}]}\n", MAX_NESTING), 3);
        // as deep as allowed: parsed (and refused by YAML's own rules, not by the scan)
        let (_, errors) = parse_manifests(&deep(64), "deep.yaml");
        assert!(!errors[0].reason.contains("nest more than"), "{}", errors[0].reason);
        // nested by indentation: the parser stops at the same depth, where it is (linear time)
        let block: String = (0..1_000).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
        let (_, errors) = parse_manifests(&block, "deep.yaml");
        assert!(errors[0].reason.contains("Depth { depth: 65 } at line 65"), "{}", errors[0].reason);
    }

    #[test]
    fn a_duplicate_key_is_refused_not_silently_overwritten() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n\
                    metadata: {name: b}\n";
        let (objects, errors) = parse_manifests(text, "dup.yaml");
        assert!(objects.is_empty());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].reason.contains("duplicate mapping key: metadata"), "{}", errors[0].reason);
        assert!(errors[0].reason.contains("line 5"), "{}", errors[0].reason);
    }

    #[test]
    fn a_document_that_does_not_parse_does_not_hide_the_next() {
        let svc = |name: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: 80}}]}}\n")
        };
        let text = format!("{}---\n? [1]\n: 2\n---\n{}", svc("a"), svc("b"));
        let (objects, errors) = parse_manifests(&text, "x.yaml");
        assert_eq!(objects.len(), 2, "{errors:?}");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].reason.starts_with("document 2: YAML does not parse"), "{}", errors[0].reason);
    }

    #[test]
    fn scalars_read_as_kubectl_reads_them() {
        // YAML 1.1, as Kubernetes' own reader: an unquoted `yes` is a boolean (so a string field
        // refuses it, as the apiserver does) and a leading zero means octal
        let (_, errors) =
            parse_manifests("apiVersion: v1\nkind: Service\nmetadata: {name: a, labels: {tier: yes}}\n", "x.yaml");
        assert!(errors[0].reason.contains("at metadata.labels.tier: invalid type: boolean"), "{}", errors[0].reason);
        let (objects, errors) = parse_manifests(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 0120}]}\n",
            "x.yaml",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let Object::Service(svc) = &objects[0] else { panic!("a Service") };
        assert_eq!(svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port, 80);
    }

    #[test]
    fn an_alias_bomb_is_refused() {
        let mut text = "a: &a [x, x, x, x, x, x, x, x, x]\n".to_string();
        for (name, prev) in [("b", "a"), ("c", "b"), ("d", "c"), ("e", "d"), ("f", "e"), ("g", "f")] {
            text.push_str(&format!("{name}: &{name} [{}]\n", vec![format!("*{prev}"); 9].join(", ")));
        }
        let (objects, errors) = parse_manifests(&text, "bomb.yaml");
        assert!(objects.is_empty());
        assert!(errors[0].reason.contains("alias replay limit exceeded"), "{}", errors[0].reason);
    }

    #[test]
    fn broken_yaml_is_reported_with_its_location() {
        let (objects, errors) = parse_manifests("a: [1, 2\nb: 3\n", "bad.yaml");
        assert!(objects.is_empty());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].reason.contains("line"), "{}", errors[0].reason);
    }
}
