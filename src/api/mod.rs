//! weir's own CRDs (API group `weir.dev`): their wire types, one file each (the store and every
//! tier import them from here, never from a tier), and their rendering as a cluster receives
//! them, with only the schema formats the apiserver knows.
//!
//! schemars describes a `u32` field as `format: uint32`; the apiserver does not know that format,
//! warns `unrecognized format "uint32"` on every apply, and drops it. The test cluster showed it.
//! Integers keep `int32`/`int64`, numbers `float`/`double`, strings the formats of Kubernetes'
//! list (apiextensions-apiserver `validation/formats.go`); every other format goes.

pub mod backend_policy;
pub mod duration;
pub mod mesh_authorization;
pub mod spiffe;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};

/// String formats the apiserver validates (compared without dashes, as it does).
const STRING_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
    "k8sshortname",
    "k8slongname",
];

/// The status of weir's own resources: whether weir accepted the object, and why not (GEP-713's
/// `Accepted`, with the same reason text as `/config_dump`). Written by the replica that leads.
#[derive(schemars::JsonSchema, serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PolicyStatus {
    /// `Accepted`: `True`, or `False` with a reason such as `Invalid` or `TargetNotFound`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<PolicyCondition>,
}

/// One condition, as the Kubernetes API conventions write it.
#[derive(schemars::JsonSchema, serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    /// The object's `metadata.generation` the condition describes.
    pub observed_generation: i64,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

/// The CRD as YAML, ready for `kubectl apply -f -`, its schema holding only formats the
/// apiserver knows.
pub fn crd_yaml(mut crd: CustomResourceDefinition) -> String {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
            keep_known_formats(schema);
        }
    }
    serde_saphyr::to_string(&crd).expect("a CRD serializes to YAML")
}

/// Removes, here and in every nested schema, a format the apiserver would warn about. A wider
/// integer format is not substituted: `int64` would make clients of a `u16` field expect more.
fn keep_known_formats(schema: &mut JSONSchemaProps) {
    if let Some(format) = &schema.format {
        let known = match schema.type_.as_deref() {
            Some("integer") => format == "int32" || format == "int64",
            Some("number") => format == "float" || format == "double",
            Some("string") | None => STRING_FORMATS.contains(&format.replace('-', "").as_str()),
            Some(_) => false,
        };
        if !known {
            schema.format = None;
        }
    }
    let maps = [&mut schema.properties, &mut schema.pattern_properties, &mut schema.definitions];
    for map in maps.into_iter().flatten() {
        map.values_mut().for_each(keep_known_formats);
    }
    let lists = [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of];
    for list in lists.into_iter().flatten() {
        list.iter_mut().for_each(keep_known_formats);
    }
    if let Some(not) = &mut schema.not {
        keep_known_formats(not);
    }
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(s)) => keep_known_formats(s),
        Some(JSONSchemaPropsOrArray::Schemas(list)) => list.iter_mut().for_each(keep_known_formats),
        None => {}
    }
    for nested in [&mut schema.additional_properties, &mut schema.additional_items] {
        if let Some(JSONSchemaPropsOrBool::Schema(s)) = nested {
            keep_known_formats(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn formats(yaml: &str) -> Vec<String> {
        yaml.lines().filter_map(|l| l.trim().strip_prefix("format: ")).map(str::to_string).collect()
    }

    #[test]
    fn unknown_formats_go_known_ones_stay() {
        let schema: JSONSchemaProps = serde_json::from_value(serde_json::json!({
            "type": "object",
            "properties": {
                "port": {"type": "integer", "format": "uint16"},
                "count": {"type": "integer", "format": "int32"},
                "ratio": {"type": "number", "format": "double"},
                "since": {"type": "string", "format": "date-time"},
                "name": {"type": "string", "format": "k8s-short-name"},
                "bogus": {"type": "string", "format": "uint8"},
                "list": {"type": "array", "items": {"type": "integer", "format": "uint32"}},
                "map": {"type": "object", "additionalProperties": {"type": "integer", "format": "uint64"}}
            }
        }))
        .unwrap();
        let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "things.weir.dev"},
            "spec": {"group": "weir.dev", "scope": "Namespaced",
                "names": {"kind": "Thing", "plural": "things"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": schema}}]}
        }))
        .unwrap();
        let mut got = formats(&crd_yaml(crd));
        got.sort();
        assert_eq!(got, ["date-time", "double", "int32", "k8s-short-name"]);
    }

    #[test]
    fn weir_crds_carry_only_formats_the_apiserver_knows() {
        for yaml in [crate::api::backend_policy::crd_yaml(), crate::api::mesh_authorization::crd_yaml()] {
            for format in formats(&yaml) {
                assert!(
                    ["int32", "int64", "float", "double"].contains(&format.as_str())
                        || STRING_FORMATS.contains(&format.replace('-', "").as_str()),
                    "the apiserver would warn about format {format:?}"
                );
            }
        }
    }
}
