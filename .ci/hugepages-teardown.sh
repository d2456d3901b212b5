#!/usr/bin/env bash
# CI, as root, after the tests: undo exactly what .ci/hugepages-setup.sh recorded in
# $STATE (mounts it made, directories it created, pages it added), in reverse order.
set -euo pipefail
state=${MSHARE_CI_STATE:-/run/mshare-ci-hugepages}
pool=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages

if [ ! -e "$state" ]; then
    echo "hugepages-teardown: nothing to undo"
    exit 0
fi
tac "$state" | while read -r what value; do
    case "$what" in
        mount)
            # A region a crashed test left mapped keeps the mount busy: detach it anyway.
            umount "$value" 2>/dev/null || umount --lazy "$value"
            echo "hugepages-teardown: umount $value"
            ;;
        directory)
            rmdir "$value" 2>/dev/null || echo "hugepages-teardown: $value is not empty, kept"
            ;;
        pool_pages)
            now=$(cat "$pool")
            echo $(( now > value ? now - value : 0 )) > "$pool"
            echo "hugepages-teardown: 2 MiB pool $now -> $(cat "$pool") pages"
            ;;
    esac
done
rm -f "$state"
