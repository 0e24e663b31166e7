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
use common::wordpress::*;
use common::*;

use std::path::PathBuf;

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
