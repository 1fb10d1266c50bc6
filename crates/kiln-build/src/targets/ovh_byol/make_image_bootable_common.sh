readonly EFI_REMOVABLE_FALLBACK='@EFI_REMOVABLE_FALLBACK@'
readonly OVH_DIR=/root/.ovh

readonly CMDLINE_FILE="${KILN_CMDLINE:-/proc/cmdline}"
readonly EFI_SYSFS_DIR="${KILN_EFI_DIR:-/sys/firmware/efi}"
readonly ROOT="${KILN_ROOT:-}"

CURRENT_STEP=startup
FAILURE=
TEE_PID=

# Logs go to stderr so that functions can print their results on stdout.
log() {
    printf '%(%Y-%m-%dT%H:%M:%S%z)T %s\n' -1 "$*" >&2
}

# Logs the reason and returns non-zero, so the ERR trap reports where.
fail() {
    FAILURE="$*"
    log "ERROR: ${FAILURE}"
    return 1
}

on_err() {
    local status=$1 line=$2 command=$3 function=${4:-main} what
    if [[ ${command} == "return 1" && -n ${FAILURE} ]]; then
        what=${FAILURE} # from fail(): the reason says more than "return 1"
    else
        what="'${command}' exited with status ${status}"
    fi
    if [[ ${BASHPID} != "$$" ]]; then
        # A subshell (command substitution): report the inner command, the
        # top-level shell then reports the step.
        log "error at line ${line} in ${function}: ${what}"
        exit "${status}"
    fi
    log "FAILED in step ${CURRENT_STEP}, line ${line} (${function}): ${what}"
    log "the image is NOT bootable; ${OVH_DIR} is kept so this script can be rerun from the rescue system"
    exit "${status}"
}
trap 'on_err "$?" "${LINENO}" "${BASH_COMMAND}" "${FUNCNAME[0]:-main}"' ERR

setup_logging() {
    mkdir -p "${LOG%/*}"
    # The status of a process substitution cannot be checked where it is
    # created; flush_log waits for tee instead.
    # shellcheck disable=SC2312
    exec > >(tee -a "${LOG}") 2>&1
    TEE_PID=$!
    trap flush_log EXIT
}

# Lets tee write the last lines before the installer (or a test) reads the
# log. Bounded: a daemon that inherited stdout must not hang the install.
flush_log() {
    exec >&- 2>&-
    local _
    for _ in {1..50}; do
        kill -0 "${TEE_PID}" 2>/dev/null || return 0
        sleep 0.1
    done
}

run_step() {
    local started=${SECONDS}
    CURRENT_STEP=$1
    log "==> step ${CURRENT_STEP}: start"
    "$1"
    log "==> step ${CURRENT_STEP}: done in $((SECONDS - started))s"
}

# Prints the console= parameters of the rescue kernel, one per line, in order.
# Words after a lone "--" belong to init, not to the kernel.
rescue_consoles() {
    [[ -r ${CMDLINE_FILE} ]] || fail "cannot read ${CMDLINE_FILE}: is /proc mounted in the chroot?"
    local -a words=()
    local word
    IFS=$' \t\n' read -r -d '' -a words <"${CMDLINE_FILE}" || true
    for word in "${words[@]}"; do
        [[ ${word} != -- ]] || break
        [[ ${word} == console=* ]] || continue
        if [[ ${word} =~ ^console=[A-Za-z0-9,._:/-]+$ ]]; then
            printf '%s\n' "${word}"
        else
            log "warning: ignoring console parameter with unexpected characters: ${word}"
        fi
    done
}

# Prints the GRUB serial command for the last ttyS console (the one the
# kernel makes /dev/console), or nothing. Kernel syntax:
# ttyS<unit>[,<speed>[<parity>[<bits>][r]]], defaults 9600n8.
serial_command() {
    local console unit='' speed='' parity='' bits=''
    for console in "$@"; do
        if [[ ${console} =~ ^console=ttyS([0-9]+)(,([0-9]+)([noe]?)([5-8]?)r?)?$ ]]; then
            unit=${BASH_REMATCH[1]}
            speed=${BASH_REMATCH[3]:-9600}
            parity=${BASH_REMATCH[4]:-n}
            bits=${BASH_REMATCH[5]:-8}
        fi
    done
    [[ -n ${unit} ]] || return 0
    case ${parity} in
        o) parity=odd ;;
        e) parity=even ;;
        *) parity=no ;;
    esac
    printf 'serial --unit=%s --speed=%s --parity=%s --word=%s\n' "${unit}" "${speed}" "${parity}" "${bits}"
}

# Prints the value a variable gets in /etc/default/grub. The file is shell
# that grub-mkconfig sources, so sourcing it is the exact way to read it.
grub_default_value() {
    local name=$1 file=$2
    (
        trap - ERR
        set +eu
        # shellcheck source=/dev/null
        . "${file}" >/dev/null 2>&1
        printf '%s' "${!name-}"
    )
}

# Sets NAME="VALUE" in /etc/default/grub: replaces the first assignment,
# drops later ones (they would win), appends if there is none.
set_grub_default() {
    local name=$1 value=$2 file=$3
    if [[ ${value} == *[\"\\\$\`]* || ${value} == *$'\n'* ]]; then
        fail "refusing to write ${name}: its value has shell-special characters: ${value}"
    fi
    local line="${name}=\"${value}\""
    awk -v name="${name}" -v line="${line}" '
        $0 ~ ("^[[:space:]]*(export[[:space:]]+)?" name "=") { if (!done) print line; done = 1; next }
        { print }
        END { if (!done) print line }
    ' "${file}" >"${file}.kiln-new"
    chmod --reference="${file}" "${file}.kiln-new"
    mv -f "${file}.kiln-new" "${file}"
    log "${file#"${ROOT}"}: ${line}"
}
