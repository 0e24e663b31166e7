//! Apps on real boots (issue 15): a master and a node from ONE image built with
//! `--app wordpress.app` (scripts/make-wordpress-app: MariaDB and WordPress images made from
//! Debian packages) and a second app whose manifest the API server rejects. No registry is
//! reachable: the guests' only networks are the harness's hub and QEMU's restricted user
//! network. WordPress runs on the node, MariaDB on the master, WordPress reaches MariaDB through
//! the `mysql` Service and the cluster DNS; the test installs WordPress by HTTP through a port
//! forwarded to the node's NodePort, publishes a post, powers both machines off and on, and
//! reads the post back.
//!
//! End-to-end tier (`scripts/test --e2e`): two Kubernetes machines under TCG.

mod common;

use common::cluster::*;
use common::hub::Hub;
use common::*;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// How long a WordPress page may take under TCG (PHP, and MariaDB on the other machine).
const PAGE: Duration = Duration::from_secs(120);

/// The admin password the test installs WordPress with (the site is on loopback only).
const ADMIN_PASSWORD: &str = "planet-e2e-Admin-7f3c";

/// One HTTP/1.0 request to 127.0.0.1:`port`: (status, body).
fn request(port: u16, method: &str, path: &str, content_type: &str, body: &str) -> std::io::Result<(u16, String)> {
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

fn get(port: u16, path: &str) -> (u16, String) {
    request(port, "GET", path, "text/plain", "").unwrap_or_else(|e| panic!("GET {path} on 127.0.0.1:{port}: {e}"))
}

/// `application/x-www-form-urlencoded` of the pairs.
fn form(pairs: &[(&str, &str)]) -> String {
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

/// The second app: one ConfigMap whose name the API server refuses (upper case, underscore).
fn broken_app(s: &Scratch) -> PathBuf {
    let dir = s.path("broken");
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(dir.join("app.yaml"), "name: broken\nversion: 1.0.0\nmanifests: [manifests/bad.yaml]\n").unwrap();
    std::fs::write(
        dir.join("manifests/bad.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Not_A_Valid_Name}\ndata: {a: b}\n",
    )
    .unwrap();
    let out = s.path("broken.app");
    ok(planet_image().arg("app").arg("build").arg(&dir).arg("-o").arg(&out));
    out
}

/// `planet-node status` on `m` until its line for `app` contains `want`.
fn wait_app(m: &Machine, app: &str, want: &str, limit: Duration) -> String {
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
fn placement(master: &Machine) -> String {
    master.enter_ok(&[
        "kubectl",
        "get",
        "pods",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{"\n"}{end}"#,
    ])
}

/// Reads the posts through the REST API until `title` is among them.
fn wait_post(port: u16, title: &str) {
    let mut last = (0, String::new());
    let seen = poll(PAGE * 5, || {
        last = request(port, "GET", "/?rest_route=/wp/v2/posts", "text/plain", "").unwrap_or((0, String::new()));
        (last.0 == 200 && last.1.contains(title)).then_some(())
    });
    assert!(seen.is_some(), "post {title:?} not read back: {} {}", last.0, tail(&last.1));
}

fn install_and_publish(port: u16, title: &str) {
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

#[test]
fn wordpress_runs_across_master_and_node_without_a_registry_and_keeps_its_post_across_reboots() {
    let mut phases = Phases::new();
    let s = Scratch::new("apps-wordpress");
    let wordpress = fixture("wordpress.app");
    assert!(
        wordpress.is_file(),
        "{} missing: scripts/test --e2e makes it (scripts/make-wordpress-app)",
        wordpress.display()
    );
    let broken = broken_app(&s);
    let mut args: Vec<&str> = FAST_BUILD.to_vec();
    let (w, b) = (wordpress.display().to_string(), broken.display().to_string());
    args.extend(["--app", &w, "--app", &b]);
    let image = kube_disk(&s, &args);
    let hub = Hub::start();
    phases.done("image built with two apps");

    let port = free_port();
    let forward = ["--forward".to_string(), format!("{port}:30080")];
    let mut master = start(&s, &image, &hub, "master-1", "master", 10, TOKEN);
    let mut node = start_with(&s, &image, &hub, ("node-1", "node", 11), TOKEN, &forward);
    wait_up(&mut [&mut master, &mut node], &mut phases);
    wait_nodes_ready(&master, &["master-1", "node-1"], &[&node]);
    phases.done("two Nodes Ready");

    // Every machine loaded the app's images from the slot (no registry to pull from).
    for m in [&master, &node] {
        let console = m.guest.console();
        for image in ["planet/mariadb:", "planet/wordpress:"] {
            assert!(
                console.lines().any(|l| l.contains("app wordpress: image") && l.contains(image)),
                "{}: no line for {image} being loaded:\n{}",
                m.name,
                tail(&console)
            );
        }
    }

    // The master applied both apps: wordpress becomes healthy, broken fails with the API
    // server's own words and does not stop the other.
    let line = wait_app(&master, "broken", "failing", STEP);
    assert!(line.contains("manifests/bad.yaml") && line.contains("Not_A_Valid_Name"), "{line}");
    assert!(line.contains("invalid") || line.contains("Invalid"), "not the API server's message: {line}");
    wait_app(&master, "wordpress", "healthy", STEP * 2);
    phases.done("wordpress healthy, broken failing");
    let pods = placement(&master);
    assert!(
        pods.lines().any(|l| l.starts_with("mysql-") && l.ends_with(" master-1")),
        "mysql not on the master:\n{pods}"
    );
    assert!(
        pods.lines().any(|l| l.starts_with("wordpress-") && l.ends_with(" node-1")),
        "wordpress not on the node:\n{pods}"
    );
    // The database password is a Secret the master made, not a literal in a manifest.
    let secret = master.enter_ok(&["kubectl", "get", "secret", "mysql-pass", "-o", "jsonpath={.data.password}"]);
    assert!(secret.trim().len() >= 40, "no generated password in the mysql-pass Secret: {secret:?}");

    let title = "Planet keeps this post 15";
    install_and_publish(port, title);
    wait_post(port, title);
    phases.done("installed, published, read back");

    // Both machines off and on again: the post is on planet-state (hostPath volumes), the apps
    // are not applied a second time.
    master.power_cycle(&s);
    node.power_cycle(&s);
    wait_up(&mut [&mut master, &mut node], &mut phases);
    let line = wait_app(&master, "wordpress", "healthy", STEP * 2);
    let console = master.guest.console();
    assert!(
        console.lines().any(|l| l.contains("app wordpress ") && l.contains(": applied: before (recorded in")),
        "the app was applied again after the reboot ({line}):\n{}",
        tail(&console)
    );
    for m in [&master, &node] {
        assert!(m.guest.console().contains("image planet/"), "{}: no image line after the reboot", m.name);
    }
    wait_post(port, title);
    phases.done("rebooted, post read back");
    drop(hub);
}
