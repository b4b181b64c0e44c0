#!/usr/bin/env bash
# Make resources/demo-guest.bin.zst: the guest disk inside the demo image, made by the
# real tools (no mounts), so the app can build its demo without any of them.
#
#   bash packaging/make-demo-guest.sh
#
# The disk (128 MiB, GPT): 1 EFI System partition (FAT32, label ESP), 2 root (ext4,
# label rootfs), 3 swap (label swap).  Two states of it are stored: "installed" (what
# the backing file holds) and "used" (after the guest ran: /etc/hostname changed,
# /var/log/syslog grew, /home/demo/notes.txt new), as the 4 KiB blocks that are not
# zero, and the blocks that differ, in qcow2view.demo_guest's format.
# Needs: gdisk, dosfstools, mtools, e2fsprogs, util-linux (mkswap), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export SOURCE_DATE_EPOCH=1767225600 E2FSPROGS_FAKE_TIME=1767225600   # 2026-01-01
MiB=$((1 << 20))
disk=$work/disk.raw
truncate -s 128M "$disk"
sgdisk -o -U 5f0c7a4e-0d1b-4c6e-9a53-7132c0f2a001 \
    -n 1:2048:+40M -t 1:ef00 -c 1:"EFI System" -u 1:5f0c7a4e-0d1b-4c6e-9a53-7132c0f2a011 \
    -n 2:0:+72M -t 2:8304 -c 2:root -u 2:5f0c7a4e-0d1b-4c6e-9a53-7132c0f2a012 \
    -n 3:0:0 -t 3:8200 -c 3:swap -u 3:5f0c7a4e-0d1b-4c6e-9a53-7132c0f2a013 "$disk" >/dev/null
part() {   # start and size in bytes of partition $1
    sgdisk -i "$1" "$disk" | awk -v n="$2" '
        /First sector/ {first=$3} /Last sector/ {last=$3}
        END {if (n == "start") print first * 512; else print (last - first + 1) * 512}'
}

# 1: the EFI System partition
esp=$work/esp.img
truncate -s "$(part 1 size)" "$esp"
mkfs.vfat -F 32 -n ESP -i 0d1b4c6e --invariant "$esp" >/dev/null
# "binaries": structured bytes that compress (the resource stays small)
binary() { python3 -c 'import sys
n, tag = int(sys.argv[1]), sys.argv[2].encode()
out = bytearray(b"MZ\x90\x00" + tag)
i = 0
while len(out) < n:
    out += ((i * 2654435761 >> 16) & 0x0F0F).to_bytes(2, "little") * 8 + tag
    i += 1
sys.stdout.buffer.write(bytes(out[:n]))' "$1" "$2"; }
binary 65536 BOOTX64 > "$work/BOOTX64.EFI"
printf 'set timeout=3\nmenuentry "Debian GNU/Linux" {\n  search --label rootfs --set=root\n  linux /boot/vmlinuz root=LABEL=rootfs ro quiet\n}\n' > "$work/grub.cfg"
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/EFI/debian
mcopy -i "$esp" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$work/grub.cfg" ::/EFI/debian/grub.cfg

# 2: the root file system, from a small tree
root=$work/root
mkdir -p "$root"/{etc,boot,home/demo,usr/bin,usr/share/doc/qcow2view,var/log,tmp}
printf 'demo-vm\n' > "$root/etc/hostname"
printf '# /etc/fstab: static file system information.\nLABEL=rootfs  /          ext4  errors=remount-ro  0 1\nLABEL=ESP     /boot/efi  vfat  umask=0077         0 1\nLABEL=swap    none       swap  sw                 0 0\n' > "$root/etc/fstab"
printf 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n' > "$root/etc/os-release"
printf 'root:x:0:0:root:/root:/bin/bash\ndemo:x:1000:1000:Demo User:/home/demo:/bin/bash\n' > "$root/etc/passwd"
for i in $(seq 1 1500); do
    printf 'Jan  1 00:%02d:%02d demo-vm kernel: [%6d.000000] qcow2view demo boot message %d\n' \
        $((i / 60 % 60)) $((i % 60)) "$i" "$i"
done > "$root/var/log/syslog"
binary 200000 hello > "$root/usr/bin/hello"
binary 800000 vmlinuz > "$root/boot/vmlinuz"
for i in $(seq 1 4000); do
    echo "qcow2view shows where every byte of a guest file lives in the qcow2 image (line $i)."
done > "$root/usr/share/doc/qcow2view/README"
cp "$root/usr/share/doc/qcow2view/README" "$root/usr/share/doc/qcow2view/README.copy"
ln "$root/usr/bin/hello" "$root/usr/bin/hello-again"            # a hard link
ln -s ../share/doc/qcow2view/README "$root/usr/bin/readme"       # a symlink
truncate -s 1M "$root/var/log/lastlog"                           # sparse: a hole
printf 'wtmp' | dd of="$root/var/log/lastlog" bs=1 seek=524288 conv=notrunc status=none
printf 'hello from the demo user\n' > "$root/home/demo/.profile"
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
rootfs=$work/root.img
truncate -s "$(part 2 size)" "$rootfs"
mkfs.ext4 -q -F -L rootfs -U 5f0c7a4e-0d1b-4c6e-9a53-7132c0f2a0e4 \
    -E hash_seed=5f0c7a4e-0d1b-4c6e-9a53-7132c0f2a0e5,lazy_itable_init=0 -d "$root" "$rootfs"

# 3: swap
swap=$work/swap.img
truncate -s "$(part 3 size)" "$swap"
mkswap -q -L swap -U 5f0c7a4e-0d1b-4c6e-9a53-7132c0f2a0f5 "$swap"

put() { dd if="$1" of="$disk" bs=1M seek="$(($(part "$2" start) / MiB))" conv=notrunc,sparse status=none; }
put "$esp" 1; put "$rootfs" 2; put "$swap" 3
cp --sparse=always "$disk" "$work/installed.raw"

# the guest ran: a new host name, a longer log, a new file (debugfs writes, no mount)
printf 'demo-vm-prod\n' > "$work/hostname"
{ cat "$root/var/log/syslog"; for i in $(seq 1501 1700); do
    printf 'Jan  2 08:%02d:%02d demo-vm-prod sshd[%d]: Accepted publickey for demo\n' \
        $((i / 60 % 60)) $((i % 60)) "$i"; done; } > "$work/syslog"
printf 'remember: snapshot before upgrading\n' > "$work/notes.txt"
E2FSPROGS_FAKE_TIME=$((SOURCE_DATE_EPOCH + 86400 + 8 * 3600)) \
    debugfs -w -f - "$rootfs" >/dev/null 2>&1 <<EOF
rm /etc/hostname
write $work/hostname /etc/hostname
rm /var/log/syslog
write $work/syslog /var/log/syslog
write $work/notes.txt /home/demo/notes.txt
EOF
e2fsck -fn "$rootfs" >/dev/null 2>&1
put "$rootfs" 2

"${PYTHON:-.venv/bin/python}" - "$work/installed.raw" "$disk" resources/demo-guest.bin.zst <<'EOF'
import sys
sys.path.insert(0, ".")
from qcow2view.demo_guest import pack
installed, used = (open(p, "rb").read() for p in sys.argv[1:3])
open(sys.argv[3], "wb").write(pack(installed, used))
EOF
ls -l resources/demo-guest.bin.zst
