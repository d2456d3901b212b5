#!/usr/bin/env bash
# CI, as root, before the tests: a hugetlb pool and the two huge-page mounts, as an
# administrator would make them with `mshare mount --hugepages 4G` (done by hand here:
# the package is not installed yet). With them, hugepages="auto" picks hugetlb for every
# region of 2 MiB or more across the whole suite, and `mshare doctor` has something to
# show. The huge-page tests set up private mounts of their own besides.
#
# What this did is written to $STATE, so .ci/hugepages-teardown.sh undoes exactly that.
# Environment: MSHARE_CI_POOL_PAGES (default 2048 pages of 2 MiB = 4 GiB),
# MSHARE_CI_STATE (default /run/mshare-ci-hugepages).
set -euo pipefail
state=${MSHARE_CI_STATE:-/run/mshare-ci-hugepages}
pages=${MSHARE_CI_POOL_PAGES:-2048}
pool=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
thp=/run/mshare/thp

if [ "$(id -u)" != 0 ]; then
    echo "hugepages-setup: not root; the huge-page tests will skip" >&2
    exit 0
fi
if [ -e "$state" ]; then
    echo "hugepages-setup: already set up (see $state)"
    exit 0
fi
: > "$state"

if [ -w "$pool" ]; then
    before=$(cat "$pool")
    echo $((before + pages)) > "$pool"
    added=$(( $(cat "$pool") - before ))
    echo "pool_pages $added" >> "$state"
    echo "hugepages-setup: 2 MiB pool $before -> $((before + added)) pages"
else
    echo "hugepages-setup: this kernel has no 2 MiB huge pages; hugetlb tests will skip"
fi

mount_once() {  # FSTYPE OPTIONS PATH
    if mountpoint -q "$3"; then
        echo "hugepages-setup: $3 is already mounted, left as it is"
        return
    fi
    # Every directory made on the way is recorded before the mount, so that the
    # teardown, reading the record backwards, unmounts first and removes them after.
    LC_ALL=C mkdir -pv "$3" | sed -n "s/^mkdir: created directory '\(.*\)'$/directory \1/p" >> "$state"
    mount -t "$1" -o "$2" none "$3"
    echo "mount $3" >> "$state"
    echo "hugepages-setup: mount -t $1 -o $2 none $3"
}
mount_once hugetlbfs mode=1777,pagesize=2M /dev/hugepages
if grep -qv '\[deny\]' /sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null; then
    # Room for the benchmarks' 4 GiB region and its bookkeeping (a tmpfs reserves nothing).
    mount_once tmpfs mode=1777,huge=within_size,size=6G "$thp"
fi
