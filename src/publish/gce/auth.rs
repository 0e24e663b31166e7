//! Google credentials, application-default chain: `GOOGLE_APPLICATION_CREDENTIALS` (a
//! service-account key, signed into an RS256 JWT and exchanged at its `token_uri`, or an
//! `authorized_user` file), then gcloud's `application_default_credentials.json` (a refresh
//! token), then the metadata server when running on GCE. `GCE_ACCESS_TOKEN`, read only when
//! set, short-cuts the chain (tests, or a token from `gcloud auth print-access-token`).
//!
//! Tokens and key material are never printed; errors name the file or variable to fix.

use super::http::{describe_status, describe_transport, Http};
use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The one OAuth scope needed: Cloud Storage uploads and Compute Engine images.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const METADATA_HOST: &str = "metadata.google.internal";

pub const CREDENTIALS_HELP: &str = "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, run \
    `gcloud auth application-default login`, or run on GCE with a service account attached";

/// An OAuth access token; its Debug and Display never show it.
#[derive(Clone)]
pub struct AccessToken {
    secret: String,
    /// Where it came from, for messages.
    pub source: String,
}

impl AccessToken {
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.secret)
    }

    /// `req` to `url` with the token only where [`sends_credentials`] allows it.
    pub fn authorize(&self, req: ureq::Request, url: &str, loopback_http: bool) -> ureq::Request {
        if sends_credentials(url, loopback_http) {
            req.set("Authorization", &self.bearer())
        } else {
            req
        }
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessToken(from {})", self.source)
    }
}

/// A credentials file: `type` decides which fields matter.
#[derive(Deserialize)]
pub struct CredentialsFile {
    #[serde(rename = "type")]
    pub kind: String,
    // service_account
    pub client_email: Option<String>,
    pub private_key: Option<String>,
    pub private_key_id: Option<String>,
    pub token_uri: Option<String>,
    // authorized_user
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub refresh_token: Option<String>,
}

/// Where the chain looks; injected so tests do not depend on the machine.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub access_token: Option<String>,
    pub credentials_file: Option<PathBuf>,
    pub gcloud_config_dir: Option<PathBuf>,
    /// Metadata server host (GCE_METADATA_HOST), else the real one when the DMI says GCE.
    pub metadata_host: Option<String>,
    pub on_gce: bool,
}

impl Environment {
    pub fn from_process() -> Environment {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let gcloud_config_dir = var("CLOUDSDK_CONFIG")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| Path::new(&h).join(".config/gcloud")));
        let product = std::fs::read_to_string("/sys/class/dmi/id/product_name").unwrap_or_default();
        Environment {
            access_token: var("GCE_ACCESS_TOKEN"),
            credentials_file: var("GOOGLE_APPLICATION_CREDENTIALS").map(PathBuf::from),
            gcloud_config_dir,
            metadata_host: var("GCE_METADATA_HOST"),
            on_gce: product.trim() == "Google Compute Engine" || product.trim() == "Google",
        }
    }
}

/// Walks the chain and returns an access token.
pub fn access_token(http: &Http, env: &Environment) -> Result<AccessToken> {
    if let Some(t) = &env.access_token {
        return Ok(AccessToken { secret: t.clone(), source: "GCE_ACCESS_TOKEN".into() });
    }
    if let Some(path) = &env.credentials_file {
        if !path.is_file() {
            bail!(
                "GOOGLE_APPLICATION_CREDENTIALS names {}, which is not a file: point it at a service-account key",
                path.display()
            );
        }
        return from_file(http, path).with_context(|| {
            format!("getting a token with the credentials in {} (GOOGLE_APPLICATION_CREDENTIALS)", path.display())
        });
    }
    if let Some(dir) = &env.gcloud_config_dir {
        let adc = dir.join("application_default_credentials.json");
        if adc.is_file() {
            return from_file(http, &adc).with_context(|| {
                format!("getting a token with the application-default credentials {}", adc.display())
            });
        }
    }
    let host = match (&env.metadata_host, env.on_gce) {
        (Some(h), _) => Some(h.clone()),
        (None, true) => Some(METADATA_HOST.to_string()),
        (None, false) => None,
    };
    match host {
        Some(h) => from_metadata(http, &h).with_context(|| format!("getting a token from the metadata server {h}")),
        None => bail!("no Google credentials found: {CREDENTIALS_HELP}"),
    }
}

fn from_file(http: &Http, path: &Path) -> Result<AccessToken> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let creds: CredentialsFile =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("not a Google credentials file: {}", e))?;
    match creds.kind.as_str() {
        "service_account" => service_account_token(http, &creds, now()),
        "authorized_user" => refresh_token(http, &creds),
        other => {
            bail!("credentials of type {other:?} are not supported: use a service_account or authorized_user file")
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// The JWT's claims: the key's account asks `token_uri` for a cloud-platform token valid one hour.
pub fn jwt_claims(client_email: &str, token_uri: &str, iat: u64) -> serde_json::Value {
    serde_json::json!({
        "iss": client_email,
        "scope": SCOPE,
        "aud": token_uri,
        "iat": iat,
        "exp": iat + 3600,
    })
}

/// The PKCS#8 DER inside a `-----BEGIN PRIVATE KEY-----` PEM.
fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        bail!("private_key is not a PEM PKCS#8 key (-----BEGIN PRIVATE KEY-----)");
    }
    base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| anyhow::anyhow!("private_key is not valid PEM"))
}

/// A signed RS256 JWT for `claims`.
pub fn sign_jwt(private_key_pem: &str, key_id: Option<&str>, claims: &serde_json::Value) -> Result<String> {
    let der = pem_to_der(private_key_pem)?;
    let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|e| anyhow::anyhow!("private_key is not a usable RSA key ({e})"))?;
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = key_id {
        header["kid"] = kid.into();
    }
    let signing_input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), signing_input.as_bytes(), &mut sig)
        .map_err(|_| anyhow::anyhow!("signing the JWT failed"))?;
    Ok(format!("{signing_input}.{}", b64url(&sig)))
}

fn service_account_token(http: &Http, creds: &CredentialsFile, iat: u64) -> Result<AccessToken> {
    let email = creds.client_email.as_deref().context("the service-account file has no client_email")?;
    let key = creds.private_key.as_deref().context("the service-account file has no private_key")?;
    let token_uri = creds.token_uri.as_deref().unwrap_or(DEFAULT_TOKEN_URI);
    let jwt = sign_jwt(key, creds.private_key_id.as_deref(), &jwt_claims(email, token_uri, iat))?;
    let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", jwt.as_str())];
    let secret = token_request(http, token_uri, &form)?;
    Ok(AccessToken { secret, source: format!("service account {email}") })
}

fn refresh_token(http: &Http, creds: &CredentialsFile) -> Result<AccessToken> {
    let field = |v: &Option<String>, name: &str| {
        v.clone().with_context(|| {
            format!("the authorized_user file has no {name}: run `gcloud auth application-default login`")
        })
    };
    let (id, secret, refresh) = (
        field(&creds.client_id, "client_id")?,
        field(&creds.client_secret, "client_secret")?,
        field(&creds.refresh_token, "refresh_token")?,
    );
    let token_uri = creds.token_uri.as_deref().unwrap_or(DEFAULT_TOKEN_URI);
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", id.as_str()),
        ("client_secret", secret.as_str()),
        ("refresh_token", refresh.as_str()),
    ];
    let secret = token_request(http, token_uri, &form)?;
    Ok(AccessToken { secret, source: "application-default user credentials".into() })
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
}

/// POSTs the form to the token endpoint; errors carry the endpoint's `error` and description only.
fn token_request(http: &Http, token_uri: &str, form: &[(&str, &str)]) -> Result<String> {
    match http.agent.post(token_uri).send_form(form) {
        Ok(resp) => {
            let text = resp.into_string().context("reading the token response")?;
            let t: TokenResponse =
                serde_json::from_str(&text).map_err(|_| anyhow::anyhow!("the token response has no access_token"))?;
            Ok(t.access_token)
        }
        Err(ureq::Error::Status(code, resp)) => {
            bail!("the token endpoint {token_uri} refused: {}", describe_status(code, resp))
        }
        Err(ureq::Error::Transport(t)) => bail!("reaching the token endpoint {token_uri}: {}", describe_transport(&t)),
    }
}

fn from_metadata(http: &Http, host: &str) -> Result<AccessToken> {
    let url = format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/token");
    match http.agent.get(&url).set("Metadata-Flavor", "Google").call() {
        Ok(resp) => {
            let text = resp.into_string().context("reading the metadata server's token")?;
            let t: TokenResponse = serde_json::from_str(&text)
                .map_err(|_| anyhow::anyhow!("the metadata server's answer has no access_token"))?;
            Ok(AccessToken { secret: t.access_token, source: "the GCE metadata server".into() })
        }
        Err(ureq::Error::Status(code, resp)) => {
            bail!("{} (is a service account attached to this instance?)", describe_status(code, resp))
        }
        Err(ureq::Error::Transport(t)) => bail!("{}: {CREDENTIALS_HELP}", describe_transport(&t)),
    }
}

/// Whether a request to `url` may carry the access token: over HTTPS; over plain HTTP only to
/// a loopback address and only when `loopback_http` (the `--compute-endpoint` of a local
/// stand-in). Storage passes `false`: an emulator (or a leftover `STORAGE_EMULATOR_HOST`) gets
/// no credentials, as Google's own clients send none to emulators.
pub fn sends_credentials(url: &str, loopback_http: bool) -> bool {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return true;
    }
    let Some(rest) = lower.strip_prefix("http://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    loopback_http && (host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_KEY: &str = include_str!("testdata/test-key.pem");

    #[test]
    fn jwt_is_rs256_over_the_expected_claims_and_verifies() {
        let claims = jwt_claims("builder@proj.iam.gserviceaccount.com", "http://127.0.0.1:1/token", 1_700_000_000);
        let jwt = sign_jwt(TEST_KEY, Some("kid-1"), &claims).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let dec = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap();
        let header: serde_json::Value = serde_json::from_slice(&dec(parts[0])).unwrap();
        assert_eq!(header, serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "kid-1"}));
        let body: serde_json::Value = serde_json::from_slice(&dec(parts[1])).unwrap();
        assert_eq!(body["iss"], "builder@proj.iam.gserviceaccount.com");
        assert_eq!(body["aud"], "http://127.0.0.1:1/token");
        assert_eq!(body["scope"], SCOPE);
        assert_eq!(body["iat"], 1_700_000_000u64);
        assert_eq!(body["exp"], 1_700_003_600u64);
        let der = pem_to_der(TEST_KEY).unwrap();
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            ring::signature::KeyPair::public_key(&key).as_ref().to_vec(),
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        public.verify(signed.as_bytes(), &dec(parts[2])).expect("the signature verifies with the key's public half");
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let e = sign_jwt(
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
            None,
            &jwt_claims("a", "b", 0),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a usable RSA key"), "{e}");
        assert!(!e.to_string().contains("bm90IGEga2V5"));
        assert!(sign_jwt("garbage", None, &jwt_claims("a", "b", 0)).is_err());
    }

    #[test]
    fn empty_chain_names_what_to_set() {
        let http = Http::new(std::time::Duration::from_secs(1));
        let e = access_token(&http, &Environment::default()).unwrap_err();
        assert!(e.to_string().contains("GOOGLE_APPLICATION_CREDENTIALS"), "{e}");
        let t = access_token(&http, &Environment { access_token: Some("tok-secret".into()), ..Default::default() })
            .unwrap();
        assert_eq!(t.bearer(), "Bearer tok-secret");
        assert!(!format!("{t:?}").contains("tok-secret"));
    }

    #[test]
    fn the_token_goes_over_https_or_to_a_loopback_stand_in_only() {
        assert!(sends_credentials("https://storage.googleapis.com/upload", false));
        assert!(!sends_credentials("http://127.0.0.1:4443/upload", false), "an emulator gets none");
        assert!(!sends_credentials("http://gcs-emulator:4443/upload", false));
        assert!(sends_credentials("http://127.0.0.1:8080/compute/v1", true));
        assert!(sends_credentials("http://[::1]:8080/compute/v1", true));
        assert!(!sends_credentials("http://10.0.0.5:8080/compute/v1", true));
        assert!(!sends_credentials("http://127.0.0.1.evil.example/compute", true));
        assert!(!sends_credentials("ftp://x", true));
    }
}
