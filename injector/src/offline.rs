//! `keyward inject`: the webhook's mutation applied to the pod templates of a YAML stream.

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;

use crate::config::InjectorConfig;
use crate::mutate::{self, MutateError, Outcome, PodView};

/// Why a stream cannot be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {index}: not valid YAML: {source}")]
    Yaml {
        index: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("document {index} ({kind}/{name}): {source}")]
    Refused {
        index: usize,
        kind: String,
        name: String,
        #[source]
        source: MutateError,
    },
    #[error("document {index} ({kind}/{name}): cannot read {what}: {message}")]
    Shape {
        index: usize,
        kind: String,
        name: String,
        what: &'static str,
        message: String,
    },
    #[error("writing YAML: {0}")]
    Write(#[source] serde_yaml_ng::Error),
}

/// Where a kind keeps its pod template, as a JSON pointer (`""` for a Pod itself).
pub fn template_pointer(api_version: &str, kind: &str) -> Option<&'static str> {
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    match (group, kind) {
        ("", "Pod") => Some(""),
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => {
            Some("/spec/template")
        }
        ("", "ReplicationController") => Some("/spec/template"),
        ("batch", "Job") => Some("/spec/template"),
        ("batch", "CronJob") => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Parses a multi-document YAML stream into JSON values (empty documents are dropped).
pub fn parse_stream(text: &str) -> Result<Vec<Value>, InjectError> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(de).map_err(|source| InjectError::Yaml {
            index: i + 1,
            source,
        })?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Writes documents as a YAML stream separated by `---`.
pub fn write_stream(docs: &[Value]) -> Result<String, InjectError> {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(doc).map_err(InjectError::Write)?);
    }
    Ok(out)
}

/// Injects every pod template of a YAML stream; returns the new stream.
pub fn inject_stream(text: &str, cfg: &InjectorConfig) -> Result<String, InjectError> {
    let mut docs = parse_stream(text)?;
    for (i, doc) in docs.iter_mut().enumerate() {
        inject_document(doc, i + 1, cfg)?;
    }
    write_stream(&docs)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Injects one document in place (`index` is 1-based, for messages). `List` items are injected
/// one by one; kinds without a pod template are left unchanged.
pub fn inject_document(
    doc: &mut Value,
    index: usize,
    cfg: &InjectorConfig,
) -> Result<(), InjectError> {
    let kind = str_at(doc, "/kind").to_owned();
    let api_version = str_at(doc, "/apiVersion").to_owned();
    let name = match str_at(doc, "/metadata/name") {
        "" => str_at(doc, "/metadata/generateName").to_owned(),
        n => n.to_owned(),
    };
    if kind == "List" || (kind.ends_with("List") && doc.get("items").is_some()) {
        if let Some(Value::Array(items)) = doc.get_mut("items") {
            for item in items {
                inject_document(item, index, cfg)?;
            }
        }
        return Ok(());
    }
    let Some(pointer) = template_pointer(&api_version, &kind) else {
        return Ok(());
    };
    let shape = |what: &'static str, message: String| InjectError::Shape {
        index,
        kind: kind.clone(),
        name: name.clone(),
        what,
        message,
    };
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let Some(template) = doc.pointer(pointer) else {
        return Err(shape("the pod template", format!("{pointer} is missing")));
    };
    let metadata: ObjectMeta = match template.get("metadata") {
        Some(m) => serde_json::from_value(m.clone())
            .map_err(|e| shape("the pod template's metadata", e.to_string()))?,
        None => ObjectMeta::default(),
    };
    let spec: PodSpec = serde_json::from_value(template.get("spec").cloned().unwrap_or_default())
        .map_err(|e| shape("the pod spec", e.to_string()))?;
    let view = PodView {
        namespace: namespace.as_deref(),
        metadata: &metadata,
        spec: &spec,
    };
    let ops = match mutate::mutate(view, cfg) {
        Ok(Outcome::Skipped(_)) => return Ok(()),
        Ok(Outcome::Patch(ops)) => ops,
        Err(source) => {
            return Err(InjectError::Refused {
                index,
                kind,
                name,
                source,
            })
        }
    };
    let mut ops: Vec<_> = ops.into_iter().map(|op| op.prefixed(pointer)).collect();
    if template.get("metadata").is_none() {
        // The template has no metadata at all: create it before adding annotations.
        ops.insert(
            0,
            mutate::PatchOp {
                op: "add",
                path: format!("{pointer}/metadata"),
                value: Value::Object(Default::default()),
            },
        );
    }
    let patch = mutate::to_json_patch(&ops).map_err(|e| shape("the patch", e.to_string()))?;
    json_patch::patch(doc, &patch).map_err(|e| shape("the patched template", e.to_string()))?;
    Ok(())
}
