//! Kubernetes manifests as `app build` checks them: every document is an object (apiVersion,
//! kind, a name), and every container image a pod template names is one the package carries,
//! pulled in a way that never asks a registry.

use anyhow::{bail, Result};
use serde_yaml::Value;

/// A container image some object of a manifest uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUse {
    /// The reference as written.
    pub image: String,
    /// `FILE: KIND/NAME container C`, for messages.
    pub place: String,
}

/// The objects (`KIND/NAME`) and image uses of one manifest file's text.
pub fn check(file: &str, text: &str) -> Result<(Vec<String>, Vec<ImageUse>)> {
    let mut objects = Vec::new();
    let mut uses = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => bail!("{file}: document {} is not valid YAML: {e}", i + 1),
        };
        if matches!(value, Value::Null) {
            continue;
        }
        object(file, i + 1, &value, &mut objects, &mut uses)?;
    }
    if objects.is_empty() {
        bail!("{file}: holds no Kubernetes object");
    }
    Ok((objects, uses))
}

fn object(file: &str, doc: usize, v: &Value, objects: &mut Vec<String>, uses: &mut Vec<ImageUse>) -> Result<()> {
    let at = format!("{file}: document {doc}");
    if !v.is_mapping() {
        bail!("{at} is not a Kubernetes object (a mapping with apiVersion, kind and metadata)");
    }
    let text = |key: &str| v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    let (Some(_), Some(kind)) = (text("apiVersion"), text("kind")) else {
        bail!("{at} has no apiVersion or kind");
    };
    if kind == "List" {
        let Some(items) = v.get("items").and_then(Value::as_sequence) else { bail!("{at}: a List needs items") };
        for item in items {
            object(file, doc, item, objects, uses)?;
        }
        return Ok(());
    }
    let meta = v.get("metadata");
    let name = meta
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let Some(name) = name else { bail!("{at}: {kind} has no metadata.name") };
    let id = format!("{kind}/{name}");
    let spec = v.get("spec");
    let pod = match kind {
        "Pod" => spec,
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicationController" => {
            spec.and_then(|s| s.get("template")).and_then(|t| t.get("spec"))
        }
        "CronJob" => spec
            .and_then(|s| s.get("jobTemplate"))
            .and_then(|j| j.get("spec"))
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("spec")),
        _ => None,
    };
    if let Some(pod) = pod {
        for list in ["initContainers", "containers", "ephemeralContainers"] {
            for c in pod.get(list).and_then(Value::as_sequence).into_iter().flatten() {
                let cname = c.get("name").and_then(Value::as_str).unwrap_or("?");
                let place = format!("{file}: {id} container {cname}");
                let Some(image) = c.get("image").and_then(Value::as_str) else { bail!("{place} has no image") };
                let policy = c.get("imagePullPolicy").and_then(Value::as_str);
                check_pull(&place, image, policy)?;
                uses.push(ImageUse { image: image.to_string(), place });
            }
        }
    }
    objects.push(id);
    Ok(())
}

/// Kubernetes pulls on every start with `Always`, and by default for `:latest` or no tag: any of
/// those would ask a registry the machine cannot reach.
fn check_pull(place: &str, image: &str, policy: Option<&str>) -> Result<()> {
    let r = normalize(image).map_err(|e| anyhow::anyhow!("{place}: {e}"))?;
    let latest = r.ends_with(":latest");
    match policy {
        Some("Always") => bail!(
            "{place}: imagePullPolicy Always asks a registry at every start; use IfNotPresent (the image is loaded at boot)"
        ),
        None if latest => bail!(
            "{place}: image {image:?} means :latest, which Kubernetes pulls at every start; give it a version tag \
             or set imagePullPolicy: IfNotPresent"
        ),
        Some("IfNotPresent" | "Never") | None => Ok(()),
        Some(other) => bail!("{place}: imagePullPolicy {other:?} is not Always, IfNotPresent or Never"),
    }
}

/// An image reference in docker's full form, `DOMAIN/PATH:TAG`: `mysql` is
/// `docker.io/library/mysql:latest`, `planet/mariadb:10.11` is
/// `docker.io/planet/mariadb:10.11`. References by digest are refused: `docker load` records
/// no registry digest, so the kubelet could never find the image.
pub fn normalize(reference: &str) -> Result<String, String> {
    if reference.contains('@') {
        return Err(format!(
            "image {reference:?} is named by digest; images loaded without a registry have no registry digest, name it by tag"
        ));
    }
    let bad = reference.is_empty()
        || reference.len() > 255
        || reference.chars().any(|c| !(c.is_ascii_alphanumeric() || "._-/:".contains(c)));
    if bad {
        return Err(format!("image {reference:?} is not a valid image reference"));
    }
    let (name, tag) = match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => (&reference[..i], &reference[i + 1..]),
        _ => (reference, "latest"),
    };
    if tag.is_empty() || name.is_empty() || name.split('/').any(str::is_empty) {
        return Err(format!("image {reference:?} is not a valid image reference"));
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            (if first == "index.docker.io" { "docker.io" } else { first }, rest.to_string())
        }
        Some(_) => ("docker.io", name.to_string()),
        None => ("docker.io", format!("library/{name}")),
    };
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("image {reference:?}: repository names are lower case"));
    }
    Ok(format!("{domain}/{path}:{tag}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_as_docker_does() {
        let n = |s: &str| normalize(s).unwrap();
        assert_eq!(n("mysql"), "docker.io/library/mysql:latest");
        assert_eq!(n("mysql:5.6"), "docker.io/library/mysql:5.6");
        assert_eq!(n("docker.io/library/mysql:5.6"), "docker.io/library/mysql:5.6");
        assert_eq!(n("index.docker.io/library/mysql:5.6"), "docker.io/library/mysql:5.6");
        assert_eq!(n("planet/mariadb:10.11.6"), "docker.io/planet/mariadb:10.11.6");
        assert_eq!(n("localhost:5000/app:1"), "localhost:5000/app:1");
        assert_eq!(n("registry.example:5000/team/app"), "registry.example:5000/team/app:latest");
        assert!(normalize("mysql@sha256:0123").unwrap_err().contains("by digest"));
        assert!(normalize("My/App:1").is_err());
        assert!(normalize("a//b:1").is_err());
        assert!(normalize("app:").is_err());
        assert!(normalize("a b").is_err());
    }

    const DEPLOYMENT: &str =
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      \
        initContainers: [{name: init, image: 'busybox:1.35', imagePullPolicy: Never}]\n      \
        containers: [{name: app, image: 'planet/web:2'}]\n";

    #[test]
    fn pod_templates_of_every_kind_yield_their_images() {
        let text = format!(
            "{DEPLOYMENT}---\n# a comment only\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n---\n\
             apiVersion: batch/v1beta1\nkind: CronJob\nmetadata: {{name: nightly}}\nspec:\n  jobTemplate:\n    spec:\n      \
             template:\n        spec:\n          containers: [{{name: c, image: 'planet/job:1'}}]\n---\n\
             apiVersion: v1\nkind: List\nitems:\n- {{apiVersion: v1, kind: Pod, metadata: {{name: p}}, spec: {{containers: [{{name: x, image: 'a/b:3'}}]}}}}\n"
        );
        let (objects, uses) = check("web.yaml", &text).unwrap();
        assert_eq!(objects, ["Deployment/web", "Service/web", "CronJob/nightly", "Pod/p"]);
        let images: Vec<_> = uses.iter().map(|u| u.image.as_str()).collect();
        assert_eq!(images, ["busybox:1.35", "planet/web:2", "planet/job:1", "a/b:3"]);
        assert_eq!(uses[1].place, "web.yaml: Deployment/web container app");
    }

    #[test]
    fn manifests_that_would_ask_a_registry_or_are_not_objects_are_refused() {
        let cases = [
            (DEPLOYMENT.replace("'planet/web:2'", "'planet/web'"), "means :latest"),
            (DEPLOYMENT.replace("'planet/web:2'}", "'planet/web:2', imagePullPolicy: Always}"), "Always"),
            (DEPLOYMENT.replace("'planet/web:2'", "'planet/web@sha256:ab'"), "by digest"),
            (DEPLOYMENT.replace("name: app, image: 'planet/web:2'", "name: app"), "container app has no image"),
            (DEPLOYMENT.replace("kind: Deployment\n", ""), "document 1 has no apiVersion or kind"),
            (DEPLOYMENT.replace("metadata: {name: web}", "metadata: {}"), "has no metadata.name"),
            ("- a\n- b\n".to_string(), "not a Kubernetes object"),
            ("kind: [unclosed\n".to_string(), "not valid YAML"),
            ("# nothing\n".to_string(), "holds no Kubernetes object"),
        ];
        for (text, want) in cases {
            let err = check("m.yaml", &text).unwrap_err().to_string();
            assert!(err.contains(want) && err.starts_with("m.yaml"), "{want:?} not in {err:?}");
        }
        // Latest with an explicit IfNotPresent is fine: the loaded image is used.
        let ok = DEPLOYMENT.replace("'planet/web:2'}", "'planet/web', imagePullPolicy: IfNotPresent}");
        assert!(check("m.yaml", &ok).is_ok());
    }
}
