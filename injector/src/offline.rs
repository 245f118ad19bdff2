//! `keyward inject`: the webhook's mutation applied to the pod templates of a YAML stream.
//!
//! The stream is read as kubectl reads it (see [`crate::yaml11`]) and written back so that every
//! YAML reader reads what kubectl would have read from the input, plus the injected parts.

// An error ends the whole run; its size on the unhappy path does not matter.
#![allow(clippy::result_large_err)]

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::InjectorConfig;
use crate::mutate::{self, MutateError, Outcome, PodView};

/// Why a stream cannot be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {index}: {source}")]
    Yaml {
        index: usize,
        #[source]
        source: Box<crate::yaml11::ReadError>,
    },
    #[error("document {index} ({kind}/{name}){}: {source}", at(&source.path))]
    Read {
        index: usize,
        kind: String,
        name: String,
        #[source]
        source: Box<crate::yaml11::ReadError>,
    },
    #[error("document {index} ({kind}/{name}){}: {source}", at(path))]
    Refused {
        index: usize,
        kind: String,
        name: String,
        /// The pod template's field path (empty for a Pod).
        path: String,
        #[source]
        source: MutateError,
    },
    #[error(
        "document {index} ({kind}/{name}){}: cannot read {what}: {message}",
        at(path)
    )]
    Shape {
        index: usize,
        kind: String,
        name: String,
        path: String,
        what: &'static str,
        message: String,
    },
}

fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(" at {path}")
    }
}

/// A JSON pointer (`/spec/template`) as a field path (`spec.template`).
fn field_path(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
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

/// Parses a multi-document YAML stream into JSON values as kubectl reads it (YAML 1.1 scalars,
/// merge keys resolved, duplicate keys refused); empty documents are dropped.
pub fn parse_stream(text: &str) -> Result<Vec<Value>, InjectError> {
    let docs = crate::yaml11::read_stream(text).map_err(|(index, source)| InjectError::Yaml {
        index,
        source: Box::new(source),
    })?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        if let Some(source) = doc.error {
            let (kind, name) = kind_name(&doc.value);
            if kind.is_empty() && name.is_empty() {
                return Err(InjectError::Yaml {
                    index: i + 1,
                    source: Box::new(source),
                });
            }
            return Err(InjectError::Read {
                index: i + 1,
                kind,
                name,
                source: Box::new(source),
            });
        }
        if !doc.value.is_null() {
            out.push(doc.value);
        }
    }
    Ok(out)
}

fn kind_name(doc: &Value) -> (String, String) {
    let kind = str_at(doc, "/kind").to_owned();
    let name = match str_at(doc, "/metadata/name") {
        "" => str_at(doc, "/metadata/generateName").to_owned(),
        n => n.to_owned(),
    };
    (kind, name)
}

/// Writes documents as a YAML stream separated by `---`, every string written so that YAML 1.1
/// readers (kubectl) and 1.2 readers read it as the same string.
pub fn write_stream(docs: &[Value]) -> Result<String, InjectError> {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&crate::yaml11::write_value(doc));
    }
    Ok(out)
}

fn read<T: DeserializeOwned>(v: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        (path, e.into_inner().to_string())
    })
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
    let (kind, name) = kind_name(doc);
    let api_version = str_at(doc, "/apiVersion").to_owned();
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
    let base = field_path(pointer);
    let shape = |what: &'static str, path: String, message: String| InjectError::Shape {
        index,
        kind: kind.clone(),
        name: name.clone(),
        path,
        what,
        message,
    };
    let join = |rel: &str, sub: String| {
        let mut p = base.clone();
        for part in [rel.to_owned(), sub] {
            if part.is_empty() || part == "." {
                continue;
            }
            if !p.is_empty() && !part.starts_with('[') {
                p.push('.');
            }
            p.push_str(&part);
        }
        p
    };
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let Some(template) = doc.pointer(pointer) else {
        return Err(shape(
            "the pod template",
            base.clone(),
            format!("{} is missing", base),
        ));
    };
    let metadata: ObjectMeta = match template.get("metadata") {
        Some(m) => read(m.clone())
            .map_err(|(p, e)| shape("the pod template's metadata", join("metadata", p), e))?,
        None => ObjectMeta::default(),
    };
    let spec: PodSpec = read(template.get("spec").cloned().unwrap_or_default())
        .map_err(|(p, e)| shape("the pod spec", join("spec", p), e))?;
    let view = PodView {
        namespace: namespace.as_deref(),
        metadata: &metadata,
        spec: &spec,
    };
    let ops = match mutate::mutate(view, cfg) {
        Ok(Outcome::Skipped(_)) => return Ok(()),
        Ok(Outcome::Patch(ops)) => ops,
        Err(source) => {
            let path = match source {
                MutateError::Annotation(_) => join("metadata.annotations", String::new()),
                MutateError::Conflict(_) => base,
            };
            return Err(InjectError::Refused {
                index,
                kind,
                name,
                path,
                source,
            });
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
    let patch =
        mutate::to_json_patch(&ops).map_err(|e| shape("the patch", base.clone(), e.to_string()))?;
    json_patch::patch(doc, &patch)
        .map_err(|e| shape("the patched template", base.clone(), e.to_string()))?;
    Ok(())
}
