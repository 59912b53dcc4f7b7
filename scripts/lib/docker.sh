# Sourced by the scripts that need a Docker engine (broker-compose/images,
# scripts/test-fresh-debian, scripts/test's Docker lane). Defines:
#
#   docker_ready        installs what is missing and starts the engine
#   docker ARGS...      the engine's own client (/usr/bin/docker, as root)
#   debian_mirror       the Debian mirror this machine's apt uses
#   debian_root SUITE DIR [PACKAGES...]
#                       a minimal Debian root (debootstrap) with the
#                       machine's registry settings and PACKAGES installed
#
# What docker_ready installs, when missing (Debian 12):
#   docker.io           the engine (20.10) and its client
#   docker-compose      Compose v1 (1.29), the `docker-compose` command
#   Compose v2 and buildx, as CLI plugins in /usr/local/lib/docker/cli-plugins:
#                       Debian 12 has neither; Debian 13's packages
#                       (docker-compose 2.26, docker-buildx 0.13) are static
#                       Go programs that run on Debian 12, taken out of their
#                       .deb files (not installed with dpkg: the v2 package is
#                       also named docker-compose and would replace v1).
# The engine starts without systemd when there is none (its log:
# /var/log/hostbus-dockerd.log).
# shellcheck shell=bash

_dk_log() { printf '==> docker: %s\n' "$*" >&2; }
_dk_die() { printf 'docker: %s\n' "$*" >&2; exit 1; }
_DK_SUDO=""
[ "$(id -u)" -eq 0 ] || _DK_SUDO="sudo"
_DK_PLUGINS=/usr/local/lib/docker/cli-plugins

debian_mirror() {
  local m
  m=$( (grep -rhoE 'https?://[^ ]*/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true) | head -1 | tr -d ' ')
  m=${m:-http://deb.debian.org/debian}
  printf '%s\n' "${m%/}"
}

# Debian 13's docker-compose and docker-buildx .deb files, fetched with apt
# from a private list of trixie's sources (the machine's own lists are not
# touched), and their one binary each put among the CLI plugins.
_dk_plugins_from_trixie() {
  local tmp opts p
  tmp=$(mktemp -d)
  mkdir -p "$tmp/lists/partial" "$tmp/archives/partial"
  printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' "$(debian_mirror)" >"$tmp/sources.list"
  opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o "Dir::State::Lists=$tmp/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
        -o "Dir::Cache::Archives=$tmp/archives" -o APT::Sandbox::User=root)
  $_DK_SUDO apt-get "${opts[@]}" update -qq >&2
  (cd "$tmp" && $_DK_SUDO apt-get "${opts[@]}" download -qq docker-compose docker-buildx >&2)
  $_DK_SUDO mkdir -p "$_DK_PLUGINS"
  for p in docker-compose docker-buildx; do
    dpkg-deb --fsys-tarfile "$tmp"/"${p}"_*.deb | tar -xO "./usr/libexec/docker/cli-plugins/$p" \
      | $_DK_SUDO tee "$_DK_PLUGINS/$p.new" >/dev/null
    $_DK_SUDO chmod 755 "$_DK_PLUGINS/$p.new"
    $_DK_SUDO mv "$_DK_PLUGINS/$p.new" "$_DK_PLUGINS/$p"
  done
  rm -rf "$tmp"
}

docker() { $_DK_SUDO "$_DK_CLIENT" "$@"; }

docker_ready() {
  local need=()
  command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ] || need+=(docker.io)
  [ -x /usr/bin/docker-compose ] || need+=(docker-compose)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  if [ ${#need[@]} -gt 0 ]; then
    _dk_log "installing ${need[*]}"
    $_DK_SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $_DK_SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
  fi
  # The engine's own client: a newer client earlier on PATH (without the
  # buildx plugin, say) speaks to the same engine anyway.
  _DK_CLIENT=/usr/bin/docker
  [ -x "$_DK_CLIENT" ] || _DK_CLIENT=docker
  if ! { [ -x "$_DK_PLUGINS/docker-compose" ] && [ -x "$_DK_PLUGINS/docker-buildx" ]; }; then
    _dk_log "adding Compose v2 and buildx (Debian 13's builds) as CLI plugins"
    _dk_plugins_from_trixie
  fi
  if ! docker info >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then
      $_DK_SUDO systemctl start docker
    else
      _dk_log "starting dockerd (no systemd; log: /var/log/hostbus-dockerd.log)"
      $_DK_SUDO sh -c 'nohup dockerd >>/var/log/hostbus-dockerd.log 2>&1 &'
    fi
    for _ in $(seq 1 150); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null 2>&1 || _dk_die "the Docker engine does not answer (see /var/log/hostbus-dockerd.log)"
  fi
}

# debian_root SUITE DIR [PACKAGES...]: debootstrap's minimal variant of
# SUITE into DIR, with the release's sources (and security updates where
# the suite has them), this machine's apt settings for reaching its mirror
# (proxies, a snapshot's validity dates) and extra CA certificates, then
# PACKAGES installed (services are not started) and apt's caches emptied.
debian_root() {
  local suite=$1 root=$2 mirror
  shift 2
  mirror=$(debian_mirror)
  _dk_log "debootstrap $suite from $mirror"
  $_DK_SUDO debootstrap --variant=minbase "$suite" "$root" "$mirror" >&2
  $_DK_SUDO rm -f "$root/etc/apt/sources.list"
  printf '%s\n' "Types: deb" "URIs: $mirror" "Suites: $suite $suite-updates" "Components: main" \
    "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" "" \
    "Types: deb" "URIs: ${mirror%/debian}/debian-security" "Suites: $suite-security" "Components: main" \
    "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" \
    | $_DK_SUDO tee "$root/etc/apt/sources.list.d/debian.sources" >/dev/null
  apt-config dump | grep -E '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy)' \
    | $_DK_SUDO tee "$root/etc/apt/apt.conf.d/90host-registry" >/dev/null || true
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    $_DK_SUDO mkdir -p "$root/usr/local/share/ca-certificates"
    $_DK_SUDO cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  fi
  # No service starts inside the root while packages are installed.
  printf '#!/bin/sh\nexit 101\n' | $_DK_SUDO tee "$root/usr/sbin/policy-rc.d" >/dev/null
  $_DK_SUDO chmod 755 "$root/usr/sbin/policy-rc.d"
  if [ $# -gt 0 ]; then
    _dk_log "installing into the $suite root: $*"
    $_DK_SUDO chroot "$root" /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $* >/dev/null" >&2
  fi
  $_DK_SUDO chroot "$root" /bin/sh -c 'command -v update-ca-certificates >/dev/null && update-ca-certificates >/dev/null; apt-get clean; rm -rf /var/lib/apt/lists/*' >&2 || true
  $_DK_SUDO rm -f "$root/usr/sbin/policy-rc.d"
}
