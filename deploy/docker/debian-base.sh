#!/usr/bin/env bash
# A Python 3.11 base image made from Debian bookworm's own packages, for building the images where no registry can
# be reached (Docker Hub's python:3.11-slim-bookworm is the default everywhere else):
#   deploy/docker/debian-base.sh                       build kdgate-python-base:3.11-bookworm unless it exists
#   deploy/docker/debian-base.sh --force [TAG]         build it again, or under another tag
#   docker build -f deploy/docker/gateway.Dockerfile --build-arg PYTHON_IMAGE=kdgate-python-base:3.11-bookworm \
#       -t kdgate/gateway:0.1.0 .
# It needs mmdebstrap (Debian package mmdebstrap), Debian's archive over HTTP and a Docker daemon; about 30 s.
# What the Dockerfiles ask of their base, and so what this gives: `python` on PATH (python-is-python3) at 3.11,
# `python -m venv` with pip inside the venv (python3-venv), groupadd/useradd (passwd, in minbase), CA certificates.
# Security updates are included (bookworm-security, bookworm-updates); documentation and locales are left out.
# Set DEBIAN_MIRROR and DEBIAN_SECURITY_MIRROR to use a mirror; DOCKER_HOST picks the daemon as for docker itself.
# EXTRA_CA_CERTS (PEM files, space-separated) are added to the image's trust store, for a network whose proxy signs
# TLS with its own CA (pip in the image builds must trust it to reach PyPI); images built on such a base carry them,
# so such a base stays on the machine that made it (the release workflow builds on python:3.11-slim-bookworm).
set -euo pipefail

force=0
if [ "${1:-}" = "--force" ]; then force=1; shift; fi
tag="${1:-kdgate-python-base:3.11-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

if [ "$force" -eq 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "debian-base: $tag is already there (--force builds it again)"
    exit 0
fi
command -v mmdebstrap >/dev/null || { echo "debian-base: mmdebstrap is missing: apt-get install mmdebstrap" >&2; exit 1; }

# mmdebstrap writes the root file system as a tar stream on stdout; `docker import` turns it into a one-layer image.
# An imported image has no environment of its own: PATH and LANG are set as python:3.11-slim sets them.
ca_hooks=()
for cert in ${EXTRA_CA_CERTS:-}; do
    [ -r "$cert" ] || { echo "debian-base: cannot read $cert (EXTRA_CA_CERTS)" >&2; exit 1; }
    # update-ca-certificates takes only files named *.crt
    ca_hooks+=(--customize-hook="upload $cert /usr/local/share/ca-certificates/extra-$(basename "${cert%.*}").crt")
done
[ "${#ca_hooks[@]}" -eq 0 ] || ca_hooks+=(--customize-hook='chroot "$1" update-ca-certificates')

mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    "${ca_hooks[@]}" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm - \
    "deb $mirror bookworm main" \
    "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main" \
    | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "Debian bookworm minbase with python3, python3-venv (deploy/docker/debian-base.sh)" \
        - "$tag"
echo "debian-base: built $tag"
