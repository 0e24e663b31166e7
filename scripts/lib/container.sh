# shellcheck shell=bash
# A Debian rootfs that boots fast as Planet's container: the units to mask, the mmdebstrap
# customize hook, and the Planet release's own systemd units. Sourced by make-planet-release.

# Units that cannot work in a container (host network, no ttys, no udev) or only slow the boot
# down; each is linked to /dev/null.
CONTAINER_MASK_UNITS=(
    systemd-networkd.service systemd-networkd-wait-online.service systemd-networkd.socket
    systemd-timesyncd.service systemd-firstboot.service systemd-logind.service
    getty.target getty@tty1.service serial-getty@ttyS0.service console-getty.service
    apt-daily.timer apt-daily.service apt-daily-upgrade.timer apt-daily-upgrade.service
    dpkg-db-backup.timer dpkg-db-backup.service e2scrub_all.timer e2scrub_all.service
    e2scrub_reap.service fstrim.timer fstrim.service
    systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service
    systemd-hwdb-update.service systemd-modules-load.service systemd-sysctl.service
    sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount
    sys-fs-fuse-connections.mount dev-hugepages.mount dev-mqueue.mount
    systemd-random-seed.service systemd-pstore.service
)

# container_customize_hook STAGE HOSTNAME: prints an mmdebstrap customize hook (run with the
# finished root as $1) that copies STAGE over the root, masks CONTAINER_MASK_UNITS, enables
# the units STAGE lists in etc/planet/enable, removes POSIX ACLs (squashfs cannot store them)
# and the apt caches.
container_customize_hook() {
    local stage=$1 host=$2 u
    echo '#!/bin/sh'
    echo 'set -eu'
    echo 'root=$1'
    printf 'cp -a %q/. "$root/"\n' "$stage"
    echo 'mkdir -p "$root/etc/systemd/system/multi-user.target.wants" "$root/etc/systemd/system.conf.d"'
    for u in "${CONTAINER_MASK_UNITS[@]}"; do
        printf 'rm -f "$root/etc/systemd/system/%s"; ln -s /dev/null "$root/etc/systemd/system/%s"\n' "$u" "$u"
    done
    echo 'find "$root/etc/systemd/system" -mindepth 2 -type l \( -name "getty@*" -o -name "e2scrub*" -o -name "fstrim*" -o -name "apt-daily*" -o -name "dpkg-db-backup*" -o -name "systemd-timesyncd*" -o -name "systemd-networkd*" \) -delete'
    # Services the packages enable for themselves start only through a role's target.
    echo 'rm -f "$root"/etc/systemd/system/multi-user.target.wants/etcd.service "$root"/etc/systemd/system/multi-user.target.wants/docker.service "$root"/etc/systemd/system/multi-user.target.wants/containerd.service "$root"/etc/systemd/system/sockets.target.wants/docker.socket'
    echo 'if [ -f "$root/etc/planet/enable" ]; then while read -r unit target; do [ -n "$unit" ] || continue; mkdir -p "$root/etc/systemd/system/$target.wants"; ln -sf "../$unit" "$root/etc/systemd/system/$target.wants/$unit"; done <"$root/etc/planet/enable"; fi'
    echo 'ln -sf /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"'
    cat <<'HOOK'
cat >"$root/etc/systemd/system.conf.d/planet-container.conf" <<'CONF'
# Planet: boot fast in a container, status lines on the console.
[Manager]
ShowStatus=yes
DefaultTimeoutStartSec=90s
DefaultTimeoutStopSec=20s
CONF
mkdir -p "$root/etc/systemd/journald.conf.d"
cat >"$root/etc/systemd/journald.conf.d/planet-container.conf" <<'CONF'
[Journal]
Storage=volatile
RuntimeMaxUse=64M
CONF
: >"$root/etc/resolv.conf"
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/debconf/*-old "$root"/var/log/*.log
find "$root" -xdev ! -type l -print0 | xargs -0 setfacl -b --
HOOK
    printf 'echo %q >"$root/etc/hostname"\n' "$host"
    printf 'printf %q >"$root/etc/hosts"\n' "127.0.0.1 localhost\n127.0.1.1 $host\n::1 localhost ip6-localhost ip6-loopback\n"
}

# unit STAGE NAME: writes stdin to STAGE/etc/systemd/system/NAME.
unit() {
    mkdir -p "$1/etc/systemd/system"
    cat >"$1/etc/systemd/system/$2"
}

# container_write_planet_units STAGE: the systemd units of a Planet Kubernetes release. The
# flags' values come from /etc/planet/kube.env, written by planet-node setup at each boot.
container_write_planet_units() {
    local s=$1 pki=/etc/kubernetes/pki kube=/etc/kubernetes
    mkdir -p "$s/etc/planet" "$s/usr/libexec/planet" "$s/etc/docker"
    # unit target: what the customize hook enables.
    printf '%s\n' 'planet-setup.service multi-user.target' >"$s/etc/planet/enable"

    unit "$s" planet-setup.service <<EOF
[Unit]
Description=Planet: PKI and configuration for this machine's role
After=local-fs.target dbus.socket
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/planet-node setup
# A node waits here for its master (which boots at the same time) before anything starts.
TimeoutStartSec=infinity
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
EOF
    unit "$s" planet-master.target <<EOF
[Unit]
Description=Planet master: etcd and the Kubernetes control plane
Wants=etcd.service kube-apiserver.service kube-controller-manager.service kube-scheduler.service planet-join.service planet-apps.service
After=planet-setup.service
EOF
    unit "$s" planet-node.target <<EOF
[Unit]
Description=Planet node: docker, the kubelet, kube-proxy, pod routes and cluster DNS
Wants=docker.service planet-images.service kubelet.service kube-proxy.service planet-routes.service planet-dns.service planet-rollout.service
After=planet-setup.service
EOF
    mkdir -p "$s/etc/systemd/system/etcd.service.d"
    cat >"$s/etc/systemd/system/etcd.service.d/planet.conf" <<EOF
# Debian's own etcd.service, started by planet-master.target once the PKI and
# /etc/default/etcd exist.
[Unit]
After=planet-setup.service
Requires=planet-setup.service
PartOf=planet-master.target
[Service]
Restart=always
RestartSec=5
EOF
    mkdir -p "$s/etc/systemd/system/docker.service.d"
    cat >"$s/etc/systemd/system/docker.service.d/planet.conf" <<EOF
[Unit]
PartOf=planet-node.target
EOF
    cat >"$s/etc/docker/daemon.json" <<EOF
{
  "exec-opts": ["native.cgroupdriver=systemd"],
  "bridge": "none",
  "iptables": false,
  "ip-masq": false,
  "log-driver": "json-file",
  "log-opts": {"max-size": "10m", "max-file": "3"},
  "storage-driver": "overlay2"
}
EOF
    unit "$s" kube-apiserver.service <<EOF
[Unit]
Description=Kubernetes API server
After=etcd.service planet-setup.service
Wants=etcd.service
PartOf=planet-master.target
[Service]
EnvironmentFile=/etc/planet/kube.env
ExecStart=/usr/bin/kube-apiserver \\
  --advertise-address=\${PLANET_ADVERTISE_IP} --bind-address=0.0.0.0 --secure-port=6443 --insecure-port=0 \\
  --etcd-servers=https://127.0.0.1:2379 --etcd-cafile=$pki/ca.crt \\
  --etcd-certfile=$pki/apiserver-etcd-client.crt --etcd-keyfile=$pki/apiserver-etcd-client.key \\
  --client-ca-file=$pki/ca.crt --tls-cert-file=$pki/apiserver.crt --tls-private-key-file=$pki/apiserver.key \\
  --kubelet-client-certificate=$pki/apiserver-kubelet-client.crt --kubelet-client-key=$pki/apiserver-kubelet-client.key \\
  --kubelet-certificate-authority=$pki/ca.crt --kubelet-preferred-address-types=InternalIP,Hostname \\
  --anonymous-auth=false --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \\
  --enable-bootstrap-token-auth=true --allow-privileged=true --profiling=false \\
  --service-cluster-ip-range=\${PLANET_SERVICE_CIDR} \\
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \\
  --service-account-key-file=$pki/sa.pub --service-account-signing-key-file=$pki/sa.key
Restart=always
RestartSec=5
LimitNOFILE=65536
EOF
    # One master per cluster: no leader election, which on a slow (emulated) machine made the
    # controller manager and scheduler exit whenever a lease renewal took over 10 s.
    unit "$s" kube-controller-manager.service <<EOF
[Unit]
Description=Kubernetes controller manager
After=kube-apiserver.service
PartOf=planet-master.target
[Service]
EnvironmentFile=/etc/planet/kube.env
# The operator's env (cloud credentials), 0600: in the environment, never on the command line.
EnvironmentFile=-/etc/planet/cloud.env
ExecStart=/usr/bin/kube-controller-manager \\
  --kubeconfig=$kube/controller-manager.kubeconfig \\
  --authentication-kubeconfig=$kube/controller-manager.kubeconfig \\
  --authorization-kubeconfig=$kube/controller-manager.kubeconfig \\
  --bind-address=127.0.0.1 --port=0 --leader-elect=false --profiling=false \\
  --use-service-account-credentials=true --service-account-private-key-file=$pki/sa.key \\
  --root-ca-file=$pki/ca.crt --cluster-signing-cert-file=$pki/ca.crt --cluster-signing-key-file=$pki/ca.key \\
  --allocate-node-cidrs=true --cluster-cidr=\${PLANET_CLUSTER_CIDR} --node-cidr-mask-size=24 \\
  --service-cluster-ip-range=\${PLANET_SERVICE_CIDR} --controllers=*,bootstrapsigner,tokencleaner \\
  --configure-cloud-routes=false \$PLANET_CLOUD_FLAGS
Restart=always
RestartSec=5
EOF
    unit "$s" kube-scheduler.service <<EOF
[Unit]
Description=Kubernetes scheduler
After=kube-apiserver.service
PartOf=planet-master.target
[Service]
ExecStart=/usr/bin/kube-scheduler --kubeconfig=$kube/scheduler.kubeconfig \\
  --authentication-kubeconfig=$kube/scheduler.kubeconfig --authorization-kubeconfig=$kube/scheduler.kubeconfig \\
  --bind-address=127.0.0.1 --port=0 --leader-elect=false --profiling=false
Restart=always
RestartSec=5
EOF
    unit "$s" planet-images.service <<EOF
[Unit]
Description=Planet: load the release's container images (but on masters, the apps' too) into docker
After=docker.service
Requires=docker.service
Before=kubelet.service
PartOf=planet-node.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/planet-node load-images
StandardOutput=journal+console
EOF
    unit "$s" kubelet.service <<EOF
[Unit]
Description=Kubernetes kubelet
After=docker.service planet-images.service planet-setup.service
Requires=docker.service
PartOf=planet-node.target
[Service]
EnvironmentFile=/etc/planet/kube.env
EnvironmentFile=-/etc/planet/cloud.env
ExecStart=/usr/bin/kubelet --config=$kube/kubelet.yaml --kubeconfig=$kube/kubelet.kubeconfig \\
  --bootstrap-kubeconfig=$kube/bootstrap-kubelet.kubeconfig --register-with-taints=\${PLANET_REGISTER_TAINTS} \\
  --hostname-override=\${PLANET_NODE_NAME} --node-ip=\${PLANET_ADVERTISE_IP} \\
  --container-runtime=docker --network-plugin=kubenet --cni-bin-dir=/usr/lib/cni \\
  --pod-infra-container-image=\${PLANET_PAUSE_IMAGE} \$PLANET_CLOUD_FLAGS
Restart=always
RestartSec=5
EOF
    unit "$s" kube-proxy.service <<EOF
[Unit]
Description=Kubernetes network proxy
After=planet-setup.service
PartOf=planet-node.target
[Service]
# On a node kube-proxy uses the kubelet's credentials, which exist once the kubelet has joined
# (after the node has loaded its images: many minutes under TCG); it waits for them here rather
# than failing and starting again every few seconds, which cost a node's CPU all that time.
ExecStartPre=/bin/sh -c 'kc=\$\$(sed -n "s/^  kubeconfig: //p" $kube/kube-proxy.yaml); [ -n "\$\$kc" ] || exit 1; until [ -s "\$\$kc" ]; do sleep 2; done'
TimeoutStartSec=infinity
ExecStart=/usr/bin/kube-proxy --config=$kube/kube-proxy.yaml
Restart=always
RestartSec=5
EOF
    unit "$s" planet-join.service <<EOF
[Unit]
Description=Planet: publish the join token, let nodes check this master, approve kubelet serving certificates
After=kube-apiserver.service
PartOf=planet-master.target
[Service]
ExecStart=/usr/bin/planet-node join-server
StandardOutput=journal+console
# A master without a join token has nothing to serve: it says so and exits 0.
Restart=on-failure
RestartSec=5
EOF
    unit "$s" planet-apps.service <<EOF
[Unit]
Description=Planet: label this master's Node, apply the slot's apps once the API server is ready, watch their health
After=kube-apiserver.service planet-join.service
PartOf=planet-master.target
[Service]
ExecStart=/usr/bin/planet-node apps
StandardOutput=journal+console
Restart=on-failure
RestartSec=10
EOF
    unit "$s" planet-rollout.service <<EOF
[Unit]
Description=Planet: report this machine's release on its Node, take its turn in cluster rollouts (masters: serve the rollout's bundle)
After=kubelet.service
PartOf=planet-node.target
[Service]
ExecStart=/usr/bin/planet-node rollout agent
StandardOutput=journal+console
Restart=always
RestartSec=10
EOF
    unit "$s" planet-routes.service <<EOF
[Unit]
Description=Planet: routes to every other Node's pod CIDR (host-gw)
After=kubelet.service
PartOf=planet-node.target
[Service]
ExecStart=/usr/bin/planet-node routes
StandardOutput=journal+console
Restart=always
RestartSec=5
EOF
    unit "$s" planet-dns.service <<EOF
[Unit]
Description=Planet: cluster DNS (dnsmasq fed from the Services) on this machine's address
After=kubelet.service
PartOf=planet-node.target
[Service]
ExecStart=/usr/bin/planet-node dns
Restart=always
RestartSec=5
EOF
    # The health contract planet-init relies on: exit 0 when this machine is healthy.
    printf '#!/bin/sh\nexec /usr/bin/planet-node health "$@"\n' >"$s/usr/libexec/planet/health"
    chmod 0755 "$s/usr/libexec/planet/health"
    mkdir -p "$s/etc/profile.d"
    printf '%s\n' '# Planet: kubectl talks to this cluster as admin in every login shell.' \
        '[ -r /etc/kubernetes/admin.kubeconfig ] && export KUBECONFIG=/etc/kubernetes/admin.kubeconfig' \
        >"$s/etc/profile.d/planet.sh"
}
