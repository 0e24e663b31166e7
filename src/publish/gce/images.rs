//! `images.insert` from the uploaded archive, and waiting on its global operation.

use super::auth::AccessToken;
use super::http::{backoff, describe_status, describe_transport, retryable, Http};
use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};

/// The guest OS features of every image: UEFI boot, multi-queue virtio-scsi and gVNIC.
pub const GUEST_OS_FEATURES: [&str; 3] = ["UEFI_COMPATIBLE", "VIRTIO_SCSI_MULTIQUEUE", "GVNIC"];

/// The object as `rawDisk.source` names it (always the public Cloud Storage URL).
pub fn source_url(bucket: &str, object: &str) -> String {
    format!("https://storage.googleapis.com/{bucket}/{object}")
}

/// The images.insert body.
pub fn insert_body(name: &str, family: Option<&str>, description: Option<&str>, source: &str) -> serde_json::Value {
    let mut body = serde_json::json!({
        "name": name,
        "rawDisk": {"source": source},
        "guestOsFeatures": GUEST_OS_FEATURES.iter().map(|f| serde_json::json!({"type": f})).collect::<Vec<_>>(),
        "architecture": "X86_64",
    });
    if let Some(f) = family {
        body["family"] = f.into();
    }
    if let Some(d) = description {
        body["description"] = d.into();
    }
    body
}

/// GCE resource names: `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!("{what} {name:?} is not a valid GCE name: 1-63 characters of a-z, 0-9 and -, starting with a letter, not ending with -");
    }
    Ok(())
}

pub struct Compute<'a> {
    pub http: &'a Http,
    pub token: &'a AccessToken,
    pub endpoint: &'a str,
    pub project: &'a str,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Inserted {
    pub self_link: String,
    pub operation: String,
}

impl Compute<'_> {
    fn base(&self) -> String {
        format!(
            "{}/compute/v1/projects/{}/global",
            self.endpoint.trim_end_matches('/'),
            super::upload::encode(self.project)
        )
    }

    /// Inserts the image and waits for its operation to be DONE.
    pub fn insert_and_wait(&self, body: &serde_json::Value, timeout: Duration) -> Result<Inserted> {
        let name = body["name"].as_str().unwrap_or_default().to_string();
        let url = format!("{}/images", self.base());
        let op = match self
            .token
            .authorize(self.http.agent.post(&url), &url, true)
            .set("Content-Type", "application/json")
            .send_string(&body.to_string())
        {
            Ok(r) => read_json(r)?,
            Err(ureq::Error::Status(409, r)) => bail!(
                "creating the image {name:?} in {}: {} (an image of that name exists: pick another --name or delete it)",
                self.project,
                describe_status(409, r)
            ),
            Err(ureq::Error::Status(code, r)) => {
                bail!("creating the image {name:?} in {}: {}{}", self.project, describe_status(code, r), hint(code))
            }
            Err(ureq::Error::Transport(t)) => {
                bail!("creating the image {name:?} in {}: {}", self.project, describe_transport(&t))
            }
        };
        let op_name = op["name"].as_str().context("the images.insert answer has no operation name")?.to_string();
        eprintln!("planet-image: creating the image {name} in {} (operation {op_name})", self.project);
        let done = self.wait(op, &op_name, timeout)?;
        let self_link = done["targetLink"].as_str().map(str::to_string).unwrap_or_else(|| {
            format!("https://www.googleapis.com/compute/v1/projects/{}/global/images/{name}", self.project)
        });
        Ok(Inserted { self_link, operation: op_name })
    }

    fn wait(&self, mut op: serde_json::Value, op_name: &str, timeout: Duration) -> Result<serde_json::Value> {
        let url = format!("{}/operations/{}", self.base(), super::upload::encode(op_name));
        let started = Instant::now();
        let mut failures = 0;
        loop {
            if op["status"] == "DONE" {
                if let Some(errors) = op["error"]["errors"].as_array() {
                    let msgs: Vec<String> = errors
                        .iter()
                        .map(|e| {
                            format!(
                                "{}: {}",
                                e["code"].as_str().unwrap_or("ERROR"),
                                e["message"].as_str().unwrap_or("")
                            )
                        })
                        .collect();
                    bail!("the image operation {op_name} failed: {}", msgs.join("; "));
                }
                return Ok(op);
            }
            if started.elapsed() > timeout {
                bail!(
                    "the image operation {op_name} is still {} after {} s (--wait-timeout); it may yet finish: \
                     gcloud compute operations describe {op_name} --global --project {}",
                    op["status"].as_str().unwrap_or("running"),
                    timeout.as_secs(),
                    self.project
                );
            }
            std::thread::sleep(Duration::from_millis(if started.elapsed() < Duration::from_secs(10) {
                500
            } else {
                3000
            }));
            match self.token.authorize(self.http.agent.get(&url), &url, true).call() {
                Ok(r) => {
                    op = read_json(r)?;
                    failures = 0;
                }
                Err(ureq::Error::Status(code, r)) if !retryable(code) => {
                    bail!("waiting on the image operation {op_name}: {}", describe_status(code, r))
                }
                Err(e) => {
                    failures += 1;
                    let reason = match e {
                        ureq::Error::Status(code, r) => describe_status(code, r),
                        ureq::Error::Transport(t) => describe_transport(&t),
                    };
                    if failures > 8 {
                        bail!("waiting on the image operation {op_name}: {failures} failures, last: {reason}");
                    }
                    std::thread::sleep(backoff(failures, Duration::from_millis(250), Duration::from_secs(20)));
                }
            }
        }
    }
}

fn read_json(r: ureq::Response) -> Result<serde_json::Value> {
    let text = r.into_string().context("reading the Compute Engine answer")?;
    serde_json::from_str(&text).context("the Compute Engine answer is not JSON")
}

fn hint(code: u16) -> &'static str {
    match code {
        401 => " (the credentials were refused)",
        403 => " (the account needs roles/compute.storageAdmin in the project, and the Compute Engine service agent read access to the bucket)",
        404 => " (no such project: check --project)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_body_has_the_source_features_and_family() {
        let b = insert_body("planet-1", Some("planet"), None, &source_url("bkt", "planet-1.tar.gz"));
        assert_eq!(
            b,
            serde_json::json!({
                "name": "planet-1",
                "family": "planet",
                "rawDisk": {"source": "https://storage.googleapis.com/bkt/planet-1.tar.gz"},
                "guestOsFeatures": [{"type": "UEFI_COMPATIBLE"}, {"type": "VIRTIO_SCSI_MULTIQUEUE"}, {"type": "GVNIC"}],
                "architecture": "X86_64",
            })
        );
        assert!(insert_body("a", None, None, "s").get("family").is_none());
    }

    #[test]
    fn names_follow_gce_rules() {
        check_name("--name", "planet-1-2").unwrap();
        for bad in ["", "Planet", "1abc", "abc-", "a_b", &"a".repeat(64)] {
            assert!(check_name("--name", bad).is_err(), "{bad}");
        }
    }
}
