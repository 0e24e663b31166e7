//! planet-node: see the library's documentation. Subcommands are run by the release's systemd
//! units (`setup`, `load-images`), by planet-init (`health`) and by people (`health`, `wait`).

use std::process::ExitCode;

const USAGE: &str = "usage: planet-node COMMAND

Runs inside the Planet container of a Kubernetes release.

commands:
  setup          make or renew the cluster PKI and kubeconfigs, write this machine's
                 configuration for its role (from /etc/container-environment), start the
                 role's targets (planet-setup.service runs it at every boot); a node
                 first checks its master with the join token and fetches the cluster CA
  load-images    load the docker archives under /usr/share/planet/images and, but on
                 role master, those of the slot's apps (/usr/share/planet/apps) into docker
  apps           (masters) once the API server is ready, load the apps' images (role master), apply the
                 slot's apps in order and once per package (recorded in
                 kube-system/planet-apps), and watch their health
  status         this machine: role, health checks, one line per app, and the cluster's
                 rollout with every machine's release, slot and trial
  rollout COMMAND
                 cluster updates, node by node: start BUNDLE, rollback, stop, status
                 (run on a master), agent (planet-rollout.service); `rollout help`
  join-server    (masters) publish the join token, serve the CA MACed with it on port 6441
                 so nodes can check this master, approve kubelet serving certificates
  routes         keep the routes to every other Node's pod CIDR in step (host-gw)
  dns            serve the Services' names with dnsmasq on this machine's address
  health         check the role's components (API server /readyz; kubelet /healthz and the
                 Node Ready) and the slot's apps; exit 0 when healthy, 1 otherwise
                 (planet-init blesses a new release only when this passes)
  wait [--timeout SECONDS]
                 wait until the Kubernetes checks pass (default 600 s), printing progress
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("setup") => planet_node::setup::run(),
        Some("load-images") => planet_node::images::run(),
        Some("apps") => planet_node::apps::run(),
        Some("status") => planet_node::health::status(),
        Some("rollout") => planet_node::rollout::command::run(&args[1..]),
        Some("join-server") => planet_node::join::run_server(),
        Some("routes") => planet_node::routes::run(),
        Some("dns") => planet_node::dns::run(),
        Some("health") => planet_node::health::run(),
        Some("wait") => planet_node::health::parse_timeout(&args[1..]).and_then(planet_node::health::wait),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("planet-node: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
