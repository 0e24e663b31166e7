//! WordPress seen from the test: HTTP through a port forwarded to a NodePort, its install, a
//! post, the app's status on the master (tests/apps.rs, tests/rollout.rs).

use std::io::{Read, Write};
use std::time::Duration;

use super::cluster::Machine;
use super::{enter, poll, tail};

/// How long a WordPress page may take under TCG (PHP, and MariaDB on the other machine).
pub const PAGE: Duration = Duration::from_secs(120);

/// The admin password the test installs WordPress with (the site is on loopback only).
pub const ADMIN_PASSWORD: &str = "planet-e2e-Admin-7f3c";

/// One HTTP/1.0 request to 127.0.0.1:`port`: (status, body).
pub fn request(port: u16, method: &str, path: &str, content_type: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(PAGE))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.take(8 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, body.to_string()))
}

pub fn get(port: u16, path: &str) -> (u16, String) {
    request(port, "GET", path, "text/plain", "").unwrap_or_else(|e| panic!("GET {path} on 127.0.0.1:{port}: {e}"))
}

/// `application/x-www-form-urlencoded` of the pairs.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

/// `planet-node status` on `m` until its line for `app` contains `want`.
pub fn wait_app(m: &Machine, app: &str, want: &str, limit: Duration) -> String {
    let prefix = format!("app {app} ");
    let mut last = String::new();
    let found = poll(limit, || {
        let (_, out, _) = enter(&m.sock, &["planet-node", "status"]);
        last = out;
        let line = last.lines().find(|l| l.starts_with(&prefix))?;
        line.contains(want).then(|| line.to_string())
    });
    found.unwrap_or_else(|| {
        panic!(
            "{}: app {app} not {want:?} within {limit:?}; status:\n{last}\nconsole:\n{}",
            m.name,
            tail(&m.guest.console())
        )
    })
}

/// `POD NODE` lines: where each pod runs.
pub fn placement(master: &Machine) -> String {
    master.enter_ok(&[
        "kubectl",
        "get",
        "pods",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{"\n"}{end}"#,
    ])
}

/// Reads the posts through the REST API until `title` is among them.
pub fn wait_post(port: u16, title: &str) {
    let mut last = (0, String::new());
    let seen = poll(PAGE * 5, || {
        last = request(port, "GET", "/?rest_route=/wp/v2/posts", "text/plain", "").unwrap_or((0, String::new()));
        (last.0 == 200 && last.1.contains(title)).then_some(())
    });
    assert!(seen.is_some(), "post {title:?} not read back: {} {}", last.0, tail(&last.1));
}

pub fn install_and_publish(port: u16, title: &str) {
    // The install page, served by Apache + PHP on the node, from Debian's wordpress package.
    let (status, page) = get(port, "/wp-admin/install.php");
    assert_eq!(status, 200, "install page: {}", tail(&page));
    assert!(
        page.contains("WordPress") && page.contains("name=\"weblog_title\""),
        "not the install page:\n{}",
        tail(&page)
    );

    let body = form(&[
        ("weblog_title", "Planet"),
        ("user_name", "admin"),
        ("admin_password", ADMIN_PASSWORD),
        ("admin_password2", ADMIN_PASSWORD),
        ("pw_weak", "1"),
        ("admin_email", "admin@example.com"),
        ("blog_public", "0"),
        ("language", ""),
    ]);
    let (status, page) =
        request(port, "POST", "/wp-admin/install.php?step=2", "application/x-www-form-urlencoded", &body)
            .expect("install POST");
    assert_eq!(status, 200, "install: {}", tail(&page));
    assert!(page.contains("WordPress has been installed"), "install did not succeed:\n{}", tail(&page));

    // A post through WordPress's XML-RPC API (user and password over plain HTTP).
    let call = format!(
        r#"<?xml version="1.0"?><methodCall><methodName>wp.newPost</methodName><params>
<param><value><int>1</int></value></param>
<param><value><string>admin</string></value></param>
<param><value><string>{ADMIN_PASSWORD}</string></value></param>
<param><value><struct>
<member><name>post_type</name><value><string>post</string></value></member>
<member><name>post_title</name><value><string>{title}</string></value></member>
<member><name>post_content</name><value><string>Written by tests/apps.rs.</string></value></member>
<member><name>post_status</name><value><string>publish</string></value></member>
</struct></value></param></params></methodCall>"#
    );
    let (status, answer) = request(port, "POST", "/xmlrpc.php", "text/xml", &call).expect("XML-RPC POST");
    assert!(status == 200 && !answer.contains("<fault>"), "wp.newPost: {status} {}", tail(&answer));
}
