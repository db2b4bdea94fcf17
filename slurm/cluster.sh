#!/usr/bin/env bash
# Local 2-node Slurm test cluster on this host: munged, mariadbd (socket only), slurmdbd, slurmctld and two
# slurmd "nodes" n1/n2. Debian 12 slurm-wlm 22.05, run as root, no systemd needed. Idempotent.
#
# Usage: bash slurm/cluster.sh install          apt-get the packages (quick when already installed)
#        bash slurm/cluster.sh start [--fresh]  start what is not running; --fresh: job ids restart at 1
#        bash slurm/cluster.sh stop             cancel all jobs, stop every daemon
#        bash slurm/cluster.sh status           sinfo + squeue, or "down" (exit 3)
# Config templates: slurm/local/slurm.conf, slurm/local/slurmdbd.conf (installed into /etc/slurm). See slurm/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEMPLATES="$HERE/local"
NODES=(n1 n2)
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
LOGDIR=/var/log/slurm
MYSQL_SOCK=/run/mysqld/mysqld.sock
MYSQL_PID=/run/mysqld/mysqld.pid
MUNGE_PID=/run/munge/munged.pid
DB_NAME=slurm_acct_db
START_LIMIT_S=30
STOP_LIMIT_S=30

T0=$(date +%s%N)
CMD="${1:-}"
report_time() {
    local rc=$?
    local ms=$(( ($(date +%s%N) - T0) / 1000000 ))
    [ -z "$CMD" ] || printf 'cluster.sh %s: %s in %d.%02d s\n' "$CMD" "$([ $rc = 0 ] && echo ok || echo "exit $rc")" \
        $((ms / 1000)) $((ms % 1000 / 10))
}
trap report_time EXIT

say() { echo "[cluster] $*"; }
die() { echo "[cluster] ERROR: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (the daemons and /etc/slurm need it)"; }

# ----------------------------------------------------------------------------------------------- liveness
# A pidfile's PID is alive only if /proc/<pid>/stat exists, its state is not Z (PID 1 may reap late) and
# /proc/<pid>/comm names the daemon (pidfiles survive restarts of the process table: /run may be on disk).
pid_of() {  # pidfile comm... -> prints the live PID or fails
    local pidfile=$1; shift
    [ -r "$pidfile" ] || return 1
    local pid state comm name
    pid=$(tr -dc '0-9' <"$pidfile")
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$state" != Z ] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    for name in "$@"; do
        [ "$comm" = "$name" ] && { echo "$pid"; return 0; }
    done
    return 1
}
alive() { pid_of "$@" >/dev/null; }
gone() { ! pid_of "$@" >/dev/null; }

# name -> "pidfile comm..." (slurm binaries are alternatives links to *-wlm)
daemon_spec() {
    case $1 in
        munged) echo "$MUNGE_PID munged" ;;
        mariadbd) echo "$MYSQL_PID mariadbd mysqld" ;;
        slurmdbd) echo "/run/slurmdbd.pid slurmdbd" ;;
        slurmctld) echo "/run/slurmctld.pid slurmctld slurmctld-wlm" ;;
        slurmd-*) echo "/run/$1.pid slurmd slurmd-wlm" ;;
    esac
}
ALL_DAEMONS=(munged mariadbd slurmdbd slurmctld "${NODES[@]/#/slurmd-}")
is_up() { local spec; read -r -a spec <<<"$(daemon_spec "$1")"; alive "${spec[@]}"; }

wait_until() {  # seconds description command... : poll every 0.2 s
    local limit=$1 what=$2; shift 2
    local end; end=$(( $(date +%s) + limit ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || { echo "[cluster] timed out after ${limit} s waiting for $what" >&2; return 1; }
        sleep 0.2
    done
}
tcp_open() { timeout 1 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

log_tails() {
    local f
    for f in /var/log/munge/munged.log "$LOGDIR"/munged.out "$LOGDIR"/mariadbd.log "$LOGDIR"/slurmdbd.log "$LOGDIR"/slurmdbd.out \
             "$LOGDIR"/slurmctld.log "$LOGDIR"/slurmctld.out "$LOGDIR"/slurmd-*.log "$LOGDIR"/slurmd-*.out; do
        [ -s "$f" ] || continue
        echo "----- tail $f"
        tail -n 15 "$f"
    done
}
fail_start() {
    echo "[cluster] ERROR: $*" >&2
    echo "----- daemons"; for d in "${ALL_DAEMONS[@]}"; do echo "$d: $(is_up "$d" && echo up || echo DOWN)"; done
    if tcp_open 6817; then echo "----- sinfo -N -o '%N %T %E'"; timeout 10 sinfo -N -o '%N %T %E' || true; fi
    log_tails
    exit 1
}

# ----------------------------------------------------------------------------------------------- install
installed() {
    local s; s=$(dpkg-query -W -f='${Status}\n' "${PACKAGES[@]}" 2>/dev/null) || return 1
    [ "$(grep -c 'install ok installed' <<<"$s")" = "${#PACKAGES[@]}" ]
}

cmd_install() {
    if installed; then say "packages already installed: ${PACKAGES[*]}"; return 0; fi
    need_root
    command -v apt-get >/dev/null || die "apt-get not found: this script targets Debian/Ubuntu (slurm-wlm 22.05)"
    export DEBIAN_FRONTEND=noninteractive
    # apt-get update only when there are no package lists yet, or when the install fails with the current ones.
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then apt-get update -q; fi
    # postinst prints "invoke-rc.d: policy-rc.d denied execution of start.": fine, start runs the daemons itself.
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" ||
        { apt-get update -q && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"; }
    installed || die "packages still missing after apt-get: ${PACKAGES[*]}"
    say "installed: $(slurmd -V)"
}

# ----------------------------------------------------------------------------------------------- start
install_config() {  # template dest mode -> returns 0 when dest changed
    local src=$1 dest=$2 mode=$3
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then chmod "$mode" "$dest"; return 1; fi
    install -o root -g root -m "$mode" "$src" "$dest"
    return 0
}

db_password() { sed -n 's/^StoragePass=//p' "$TEMPLATES/slurmdbd.conf"; }
db_user() { sed -n 's/^StorageUser=//p' "$TEMPLATES/slurmdbd.conf"; }
sql() { mariadb --socket="$MYSQL_SOCK" -u root -e "$1"; }

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        say "creating munge key"
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
    if ! is_up munged; then
        rm -f "$MUNGE_PID"
        runuser -u munge -- /usr/sbin/munged >>"$LOGDIR/munged.out" 2>&1 </dev/null || fail_start "munged did not start"
    fi
    wait_until 10 "munge -n | unmunge" bash -c 'munge -n | unmunge' || fail_start "munge does not work"
}

start_mariadb() {
    if ! is_up mariadbd; then
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >>"$LOGDIR/mariadbd.log" 2>&1
        rm -f "$MYSQL_PID"
        setsid mariadbd --user=mysql --skip-networking --socket="$MYSQL_SOCK" --pid-file="$MYSQL_PID" \
            >>"$LOGDIR/mariadbd.log" 2>&1 </dev/null &
    fi
    wait_until "$START_LIMIT_S" "mariadbd" mariadb-admin --socket="$MYSQL_SOCK" ping || fail_start "mariadbd did not start"
    local user pass
    user=$(db_user) pass=$(db_password)
    sql "CREATE USER IF NOT EXISTS '$user'@'localhost' IDENTIFIED BY '$pass';
         GRANT ALL ON $DB_NAME.* TO '$user'@'localhost';" || fail_start "cannot create the MariaDB user $user"
}

start_slurm_daemon() {  # name command...
    local name=$1; shift
    is_up "$name" && return 0
    local spec; read -r -a spec <<<"$(daemon_spec "$name")"
    rm -f "${spec[0]}"
    "$@" >>"$LOGDIR/$name.out" 2>&1 </dev/null || fail_start "$name did not start: $*"
}

all_idle() {
    local out; out=$(timeout 5 sinfo -h -N -o '%N %T') || return 1
    [ "$(printf '%s\n' "$out" | awk '$2 == "idle"' | sort -u | wc -l)" = "${#NODES[@]}" ]
}

DIED=""
nodes_idle_or_daemon_died() {  # stop waiting early when a daemon has exited (e.g. a port in use)
    local d; for d in slurmdbd slurmctld "${NODES[@]/#/slurmd-}"; do is_up "$d" || { DIED=$d; return 0; }; done
    all_idle
}

cmd_start() {
    local fresh=0
    case "${1:-}" in --fresh) fresh=1 ;; "") ;; *) die "start: unknown option $1 (use --fresh)" ;; esac
    need_root
    installed || die "Slurm is not installed: run 'bash slurm/cluster.sh install' (or 'bash install.sh test')"

    mkdir -p /var/spool/slurmctld "$LOGDIR" /run/munge /run/mysqld /etc/slurm
    local n; for n in "${NODES[@]}"; do mkdir -p "/var/spool/slurmd/$n"; done
    chown munge:munge /run/munge && chown mysql:mysql /run/mysqld

    local changed=0
    install_config "$TEMPLATES/slurm.conf" /etc/slurm/slurm.conf 644 && changed=1
    install_config "$TEMPLATES/slurmdbd.conf" /etc/slurm/slurmdbd.conf 600 && changed=1
    if [ $fresh = 1 ]; then
        say "fresh start: stopping Slurm, dropping $DB_NAME, wiping the controller and node state"
        stop_slurm
    elif [ $changed = 1 ] && { is_up slurmctld || is_up slurmdbd || is_up slurmd-n1 || is_up slurmd-n2; }; then
        say "config templates changed: restarting the Slurm daemons"
        stop_slurm
    fi

    # /etc/hosts: node names must resolve (torch rendezvous uses MASTER_ADDR=n1).
    grep -qE '^127\.0\.0\.1[[:space:]]+n1[[:space:]]+n2([[:space:]]|$)' /etc/hosts || echo '127.0.0.1 n1 n2' >>/etc/hosts

    start_munge
    start_mariadb
    if [ $fresh = 1 ]; then
        sql "DROP DATABASE IF EXISTS $DB_NAME;"
        find /var/spool/slurmctld -mindepth 1 -delete
        for n in "${NODES[@]}"; do find "/var/spool/slurmd/$n" -mindepth 1 -delete; done
        local f; for f in "$LOGDIR"/slurm*.log "$LOGDIR"/slurm*.out; do [ -f "$f" ] && mv -f "$f" "$f.prev"; done
    fi

    start_slurm_daemon slurmdbd slurmdbd
    wait_until "$START_LIMIT_S" "slurmdbd on 127.0.0.1:6819" tcp_open 6819 || fail_start "slurmdbd does not listen on 6819"
    start_slurm_daemon slurmctld slurmctld
    wait_until "$START_LIMIT_S" "slurmctld" bash -c 'scontrol ping | grep -q "is UP"' || fail_start "slurmctld does not answer scontrol ping"
    for n in "${NODES[@]}"; do start_slurm_daemon "slurmd-$n" slurmd -N "$n"; done
    wait_until "$START_LIMIT_S" "nodes ${NODES[*]} idle" nodes_idle_or_daemon_died || fail_start "nodes not idle after ${START_LIMIT_S} s"
    [ -z "$DIED" ] || fail_start "$DIED exited during start (see its log below)"
    say "up: $(timeout 5 sinfo -h -N -o '%N=%T' | sort -u | tr '\n' ' ')(partition debug)"
}

# ----------------------------------------------------------------------------------------------- stop
stop_daemon() {  # name
    local spec pid; read -r -a spec <<<"$(daemon_spec "$1")"
    if pid=$(pid_of "${spec[@]}"); then
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_until "$STOP_LIMIT_S" "$1 (pid $pid) to exit" gone "${spec[@]}"; then
            say "$1 did not exit after ${STOP_LIMIT_S} s: KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "${spec[0]}"
}

cancel_jobs() {
    tcp_open 6817 && is_up slurmctld || return 0
    local jobs; jobs=$(timeout 10 squeue -h -o %i 2>/dev/null) || return 0
    [ -n "$jobs" ] || return 0
    say "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
    scancel --user=root || true
    # jobs of other users, if any
    sleep 0.5
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null) || true
    [ -z "$jobs" ] || scancel $jobs 2>/dev/null || true
    wait_until "$STOP_LIMIT_S" "an empty squeue" bash -c '[ -z "$(squeue -h -o %i)" ]' ||
        say "jobs still listed after ${STOP_LIMIT_S} s: $(squeue -h -o '%i %T' | tr '\n' ' ')"
}

stop_slurm() {  # jobs first, else their processes outlive the daemons
    cancel_jobs
    local n; for n in "${NODES[@]}"; do stop_daemon "slurmd-$n"; done
    stop_daemon slurmctld
    stop_daemon slurmdbd
}

stop_all() {
    stop_slurm
    stop_daemon mariadbd
    stop_daemon munged
}

cmd_stop() { need_root; stop_all; say "stopped"; }

# ----------------------------------------------------------------------------------------------- status
cmd_status() {
    if is_up slurmctld && tcp_open 6817; then
        timeout 10 sinfo -N -o '%N %P %T %c %m %E'
        echo
        timeout 10 squeue
        return 0
    fi
    local up=() d
    for d in "${ALL_DAEMONS[@]}"; do is_up "$d" && up+=("$d"); done
    echo "cluster is down (slurmctld not running)${up[*]:+; still running: ${up[*]}}. Start: bash slurm/cluster.sh start"
    return 3
}

case "$CMD" in
    install) cmd_install ;;
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) CMD=""; sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
