#!/usr/bin/env bash
# The kernel-VM leg of the harness: one qemu VM running Debian's stock kernel
# (which has ip_gre, ESP and WireGuard; the host's kernel may not), whose root
# is the host's own filesystem, read-only through 9p under a tmpfs overlay, so
# every host binary runs inside it at its own path. The harness's run dir is
# shared read-write at its own path. Commands run in it through
# `multivpc-vm agent` (e2e/src/vm.rs), reached on a forwarded loopback port.
#
#   vm.sh build        download + unpack the kernel and busybox-static (cached)
#   vm.sh up           boot the VM (idempotent), wait for its agent
#   vm.sh down         stop it
#   vm.sh status       is it up, boot time
#   vm.sh exec CMD...  run CMD in the VM (exit status kept)
#
# Everything comes from Debian's packages: qemu-system-x86 is installed, the
# kernel (linux-image-amd64's current image) and busybox-static are only
# downloaded and unpacked into $MULTIVPC_CACHE/vm-<package>-<version>.
# Software emulation (TCG): see e2e/README.md "Kernel VM" for why not KVM.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VM_RUN="$RUN_DIR/vm"
VM_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
VM_AGENT_BIN="$VM_TARGET_DIR/debug/multivpc-vm"
# A loopback address of this harness alone (kubelets use 127.<instance>.<cluster>.<slot>, cluster >= 1).
VM_AGENT_ADDR="127.$HARNESS_INSTANCE.0.1:7100"
VM_GUEST_IP=10.0.2.15 # qemu user networking's guest address; the host is 10.0.2.2
VM_MEMORY_MB="${MULTIVPC_VM_MEMORY_MB:-2048}"
VM_BOOT_TIMEOUT="${MULTIVPC_VM_BOOT_TIMEOUT:-300}"
# Loaded at boot from the initramfs: what mounting the host's root needs.
VM_BOOT_MODULES="virtio_pci 9pnet_virtio 9p virtio_net overlay"

agent() { "$VM_AGENT_BIN" exec --run-dir "$RUN_DIR" "$@"; }

# vm_dir: the unpacked kernel and busybox for the current linux-image-amd64 (built if missing).
vm_dir() {
  local pkg ver dir tmp kver
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [ -z "$pkg" ]; then
    apt_locked update -qq
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  fi
  [ -n "$pkg" ] || die "apt knows no linux-image-amd64"
  ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
  dir="$MULTIVPC_CACHE/vm-$pkg-$ver"
  if [ ! -e "$dir/.complete" ]; then
    log "unpacking Debian's $pkg $ver and busybox-static into $dir"
    tmp="$dir.tmp"
    rm -rf "$tmp" && mkdir -p "$tmp/debs"
    # apt-get download writes as the _apt user where it can: a directory of its own for it.
    chmod 0777 "$tmp/debs"
    (cd "$tmp/debs" && apt-get download -qq "$pkg" busybox-static </dev/null) >/dev/null 2>"$tmp/download.err" \
      || { cat "$tmp/download.err" >&2; die "apt-get download $pkg busybox-static failed"; }
    dpkg-deb -x "$tmp"/debs/linux-image-*.deb "$tmp/kernel"
    dpkg-deb -x "$tmp"/debs/busybox-static_*.deb "$tmp/busybox"
    kver=$(ls "$tmp/kernel/lib/modules")
    "$tmp/busybox/bin/busybox" depmod -b "$tmp/kernel" "$kver"
    mkdir -p "$tmp/out/modules"
    mv "$tmp/kernel/boot/vmlinuz-$kver" "$tmp/out/vmlinuz"
    mv "$tmp/kernel/lib/modules/$kver" "$tmp/out/modules/$kver"
    mv "$tmp/busybox/bin/busybox" "$tmp/out/busybox"
    echo "$kver" >"$tmp/out/kernel-release"
    echo "$pkg $ver" >"$tmp/out/package"
    rm -rf "$dir" && mv "$tmp/out" "$dir" && rm -rf "$tmp"
    touch "$dir/.complete"
  fi
  echo "$dir"
}

vm_build() {
  apt_ensure qemu-system-x86_64 qemu-system-x86 dpkg-deb dpkg
  vm_dir >/dev/null
}

# initramfs DIR OUT: busybox, the boot modules and an init that mounts the host's root and
# hands over to busybox init, which keeps the agent running (and reaps orphans).
initramfs() {
  local dir=$1 out=$2 kver stage line m p
  kver=$(cat "$dir/kernel-release")
  stage="$VM_RUN/initramfs"
  rm -rf "$stage" && mkdir -p "$stage/bin" "$stage/etc" "$stage/lib/modules/$kver"
  cp "$dir/busybox" "$stage/bin/busybox"
  cp "$dir/modules/$kver"/modules.{dep,alias,builtin,order,symbols} "$stage/lib/modules/$kver/"
  for m in $VM_BOOT_MODULES; do
    line=$(grep -E "/$m\.ko:" "$dir/modules/$kver/modules.dep") || die "no module $m in $dir"
    for p in ${line%%:*} ${line#*:}; do
      mkdir -p "$stage/lib/modules/$kver/$(dirname "$p")"
      cp -n "$dir/modules/$kver/$p" "$stage/lib/modules/$kver/$p"
    done
  done
  cat >"$stage/etc/vm.env" <<EOF
RUN_DIR='$RUN_DIR'
VM_DIR='$dir'
KVER='$kver'
AGENT='$VM_AGENT_BIN'
GUEST_IP='$VM_GUEST_IP'
BOOT_MODULES='$VM_BOOT_MODULES'
EOF
  cat >"$stage/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
. /etc/vm.env
mkdir -p /proc /sys /dev /host /upper /newroot
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $BOOT_MODULES; do modprobe "$m" || echo "vm init: modprobe $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host
mount -t tmpfs -o mode=0755 upper /upper
mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/data,workdir=/upper/work /newroot
for d in proc sys dev run; do mkdir -p "/newroot/$d"; done
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
ln -sf /proc/self/fd /newroot/dev/fd
ln -sf /proc/self/fd/0 /newroot/dev/stdin
ln -sf /proc/self/fd/1 /newroot/dev/stdout
ln -sf /proc/self/fd/2 /newroot/dev/stderr
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
# /run of its own (netns, xtables lock); /tmp stays the host's, under the overlay, as the
# checkout or the run dir may live there.
mount -t tmpfs -o mode=0755 run /newroot/run
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none run "/newroot$RUN_DIR"
# Every module of the kernel where modprobe looks: the kernel runs its modprobe (here
# busybox's, /bin/modprobe) in this root, and `modprobe` inside the host's root (the host may
# have no kmod) is busybox's too.
mount --bind "/newroot$VM_DIR/modules/$KVER" "/lib/modules/$KVER"
echo /bin/modprobe >/proc/sys/kernel/modprobe
mkdir -p "/newroot/usr/lib/modules/$KVER"
mount --bind "/newroot$VM_DIR/modules/$KVER" "/newroot/usr/lib/modules/$KVER"
[ -e /newroot/usr/sbin/modprobe ] || ln -s "$VM_DIR/busybox" /newroot/usr/sbin/modprobe
ip link set lo up
ip link set eth0 up
ip addr add "$GUEST_IP/24" dev eth0
echo "vm init: ready for the agent after $(cut -d' ' -f1 /proc/uptime) s"
cat >/etc/inittab <<EOT
::respawn:/bin/chroot /newroot $AGENT agent --listen 0.0.0.0:7100 --token-file $RUN_DIR/vm/token
EOT
exec /bin/init
EOF
  chmod +x "$stage/init"
  (cd "$stage" && find . | "$stage/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1 >"$out")
  rm -rf "$stage"
}

vm_up() {
  if pid_alive "$VM_RUN/qemu.pid" && agent --timeout 10 -- true 2>/dev/null; then
    log "kernel VM already up"
    return 0
  fi
  vm_down
  [ -x "$VM_AGENT_BIN" ] || die "$VM_AGENT_BIN missing (cargo build -p multivpc-e2e --bin multivpc-vm)"
  vm_build
  local dir t0 kver
  dir=$(vm_dir)
  kver=$(cat "$dir/kernel-release")
  mkdir -p "$VM_RUN" "$RUN_DIR/logs"
  # Pids of a VM that is gone: a new VM reuses small pids, which must not pass for its daemons.
  rm -rf "$RUN_DIR"/*/pids-vm
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$VM_RUN/token")
  initramfs "$dir" "$VM_RUN/initrd.gz"
  echo "$VM_AGENT_ADDR" >"$VM_RUN/agent.addr"
  log "booting the kernel VM ($kver, ${VM_MEMORY_MB} MiB, TCG); console in $RUN_DIR/logs/vm-console.log"
  t0=$(date +%s.%N)
  start_daemon "$VM_RUN/qemu.pid" "$RUN_DIR/logs/vm-qemu.log" \
    qemu-system-x86_64 -name multivpc-vm \
      -machine q35 -accel tcg,thread=multi -cpu max -smp 2 -m "$VM_MEMORY_MB" \
      -display none -no-reboot \
      -monitor "unix:$VM_RUN/monitor.sock,server,nowait" \
      -serial "file:$RUN_DIR/logs/vm-console.log" \
      -kernel "$dir/vmlinuz" -initrd "$VM_RUN/initrd.gz" \
      -append "console=ttyS0 panic=-1 quiet" \
      -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
      -virtfs "local,path=$RUN_DIR,mount_tag=run,security_model=none,multidevs=remap" \
      -netdev "user,id=n0,net=10.0.2.0/24,hostfwd=tcp:${VM_AGENT_ADDR%:*}:${VM_AGENT_ADDR##*:}-$VM_GUEST_IP:7100" \
      -device virtio-net-pci,netdev=n0
  local deadline=$(( $(date +%s) + VM_BOOT_TIMEOUT ))
  # A VM that did not come up is stopped: no half-booted VM looks up to the harness.
  boot_failed() {
    tail -20 "$RUN_DIR/logs/vm-console.log" "$RUN_DIR/logs/vm-qemu.log" >&2 2>/dev/null || true
    vm_down
    die "$1"
  }
  until agent --timeout 5 -- true 2>/dev/null; do
    pid_alive "$VM_RUN/qemu.pid" || boot_failed "qemu exited during boot"
    if grep -q "can't execute" "$RUN_DIR/logs/vm-console.log" 2>/dev/null; then
      boot_failed "the kernel VM cannot start its agent: $(grep -m1 "can't execute" "$RUN_DIR/logs/vm-console.log")"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || boot_failed "the kernel VM's agent did not answer within ${VM_BOOT_TIMEOUT}s"
    sleep 1
  done
  awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN {printf "%.1f\n", t1 - t0}' >"$VM_RUN/boot-seconds"
  log "kernel VM up in $(cat "$VM_RUN/boot-seconds") s: $(agent -- uname -r)"
}

vm_down() {
  rm -f "$VM_RUN/agent.addr"
  [ -e "$VM_RUN/qemu.pid" ] || return 0
  stop_daemon "$VM_RUN/qemu.pid"
  rm -f "$VM_RUN/monitor.sock"
  log "kernel VM stopped"
}

vm_status() {
  if pid_alive "$VM_RUN/qemu.pid" && out=$(agent --timeout 10 -- uname -r 2>&1); then
    echo "kernel VM: up, kernel $out, booted in $(cat "$VM_RUN/boot-seconds" 2>/dev/null || echo '?') s, agent $(cat "$VM_RUN/agent.addr")"
  else
    echo "kernel VM: down"
    return 1
  fi
}

case "${1:-}" in
  build) vm_build ;;
  up) vm_up ;;
  down) vm_down ;;
  status) vm_status ;;
  exec) shift; agent -- "$@" ;;
  *) die "usage: vm.sh build|up|down|status|exec CMD..." ;;
esac
