/*
 * nvmlsim: a simulated libnvidia-ml.so.1 for tests on machines without a GPU.
 *
 * The real nvidia-ml-py loads this library and calls it exactly as it calls the NVIDIA driver's.
 * Behaviour comes from a scenario file named by $VRAMGUARD_NVML_SIM, read at every nvmlInit;
 * see README.md in this directory for the format. Build options -DNO_V3, -DNO_V2, -DNO_MEMORY_V2
 * leave symbols out, which is how an old driver looks to the binding.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

typedef int nvmlReturn_t;
enum {
    OK = 0, E_UNINIT = 1, E_INVALID = 2, E_NOT_SUPPORTED = 3, E_NO_PERMISSION = 4,
    E_NOT_FOUND = 6, E_INSUFFICIENT_SIZE = 7, E_DRIVER_NOT_LOADED = 9, E_GPU_LOST = 15,
    E_UNKNOWN = 999
};
#define NA 0xFFFFFFFFFFFFFFFFULL
#define MAX_DEV 16
#define MAX_MIG 8
#define MAX_KP 64
#define MAX_ENTRIES 64
#define MAX_FAULTS 64
#define MAX_PROCS 512

typedef unsigned long long ull;
typedef struct { double x[MAX_KP]; ull v[MAX_KP]; int n; int clock; } schedule_t;
enum { CLOCK_TIME = 0, CLOCK_CALLS = 1, CLOCK_AGE = 2 };
enum { F_INIT, F_COUNT, F_HANDLE, F_NAME, F_UUID, F_MEMORY, F_MEMORY_V2, F_PROCESSES, F_MIG, F_ALL };

typedef struct device {
    int present, index, parent, slot; /* parent = -1 for a physical device */
    char name[96], uuid[96];
    ull total, reserved;
    schedule_t used;
    long memory_calls;
    struct device *migs[MAX_MIG];
} device_t;

typedef struct { char dev[16]; int kind; unsigned pid; schedule_t s; } proc_entry_t;
enum { P_PID = 0, P_CHILDREN = 1, P_DESCENDANTS = 2 };
typedef struct { char dev[16]; int func; int err; double after; } fault_t;

typedef struct { unsigned pid; ull used; unsigned gi; unsigned ci; } proc_v2_t;
typedef struct { unsigned pid; ull used; } proc_v1_t;
typedef struct { ull total, free, used; } mem_v1_t;
typedef struct { unsigned version; ull total, reserved, free, used; } mem_v2_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static device_t devices[MAX_DEV];
static device_t migs[MAX_DEV][MAX_MIG];
static int device_count, initialised, default_clock;
static proc_entry_t entries[MAX_ENTRIES];
static int entry_count;
static fault_t faults[MAX_FAULTS];
static int fault_count;
static double t0;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int parse_size(const char *s, ull *out) {
    if (strcasecmp(s, "na") == 0) { *out = NA; return 1; }
    char *end;
    double v = strtod(s, &end);
    if (end == s) return 0;
    static const struct { const char *u; double m; } units[] = {
        {"", 1}, {"b", 1}, {"k", 1e3}, {"kb", 1e3}, {"m", 1e6}, {"mb", 1e6}, {"g", 1e9},
        {"gb", 1e9}, {"t", 1e12}, {"tb", 1e12}, {"kib", 1024.0}, {"mib", 1048576.0},
        {"gib", 1073741824.0}, {"tib", 1099511627776.0}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcasecmp(end, units[i].u) == 0) { *out = (ull)(v * units[i].m); return 1; }
    return 0;
}

static int parse_clock(const char *s) {
    if (strcmp(s, "calls") == 0) return CLOCK_CALLS;
    if (strcmp(s, "age") == 0) return CLOCK_AGE;
    return CLOCK_TIME;
}

/* Keypoints "x:value" (or one bare value) from tokens; "clock=..." may come first. */
static void parse_schedule(char **tok, int n, schedule_t *s) {
    s->n = 0;
    s->clock = default_clock;
    for (int i = 0; i < n && s->n < MAX_KP; i++) {
        if (strncmp(tok[i], "clock=", 6) == 0) { s->clock = parse_clock(tok[i] + 6); continue; }
        char *colon = strchr(tok[i], ':');
        ull v;
        if (colon) {
            *colon = 0;
            if (parse_size(colon + 1, &v)) { s->x[s->n] = atof(tok[i]); s->v[s->n++] = v; }
        } else if (parse_size(tok[i], &v)) {
            s->x[s->n] = 0; s->v[s->n++] = v;
        }
    }
}

static ull evaluate(const schedule_t *s, double x) {
    if (s->n == 0) return 0;
    if (x <= s->x[0]) return s->v[0];
    for (int i = 1; i < s->n; i++) {
        if (x <= s->x[i]) {
            if (s->v[i - 1] == NA || s->v[i] == NA) return s->v[i - 1];
            double f = (x - s->x[i - 1]) / (s->x[i] - s->x[i - 1]);
            return (ull)((double)s->v[i - 1] + f * ((double)s->v[i] - (double)s->v[i - 1]));
        }
    }
    return s->v[s->n - 1];
}

static const char *kv(char **tok, int n, const char *key) {
    size_t k = strlen(key);
    for (int i = 0; i < n; i++)
        if (strncmp(tok[i], key, k) == 0 && tok[i][k] == '=') return tok[i] + k + 1;
    return NULL;
}

static device_t *lookup(const char *dev) {
    int parent, slot;
    if (sscanf(dev, "%d/%d", &parent, &slot) == 2) {
        if (parent < 0 || parent >= MAX_DEV || slot < 0 || slot >= MAX_MIG) return NULL;
        return &migs[parent][slot];
    }
    int idx = atoi(dev);
    if (idx < 0 || idx >= MAX_DEV) return NULL;
    return &devices[idx];
}

static void set_identity(device_t *d, char **tok, int n) {
    const char *v;
    d->present = 1;
    if ((v = kv(tok, n, "name"))) snprintf(d->name, sizeof d->name, "%s", v);
    if ((v = kv(tok, n, "uuid"))) snprintf(d->uuid, sizeof d->uuid, "%s", v);
    if ((v = kv(tok, n, "total"))) parse_size(v, &d->total);
    if ((v = kv(tok, n, "reserved"))) parse_size(v, &d->reserved);
}

static int parse_func(const char *s) {
    static const char *names[] = {"init", "count", "handle", "name", "uuid", "memory",
                                  "memory_v2", "processes", "mig", "all"};
    for (int i = 0; i <= F_ALL; i++) if (strcmp(s, names[i]) == 0) return i;
    return -1;
}

static int parse_error(const char *s) {
    if (strcmp(s, "not_supported") == 0) return E_NOT_SUPPORTED;
    if (strcmp(s, "no_permission") == 0) return E_NO_PERMISSION;
    if (strcmp(s, "gpu_lost") == 0) return E_GPU_LOST;
    if (strcmp(s, "driver_not_loaded") == 0) return E_DRIVER_NOT_LOADED;
    if (strcmp(s, "unknown") == 0) return E_UNKNOWN;
    return atoi(s);
}

static int load_scenario(void) {
    memset(devices, 0, sizeof devices);
    memset(migs, 0, sizeof migs);
    device_count = entry_count = fault_count = 0;
    default_clock = CLOCK_TIME;
    const char *path = getenv("VRAMGUARD_NVML_SIM");
    if (!path || !*path) return E_DRIVER_NOT_LOADED;
    FILE *f = fopen(path, "r");
    if (!f) return E_DRIVER_NOT_LOADED;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char *tok[MAX_KP + 8];
        int n = 0;
        for (char *t = strtok(line, " \t\r\n"); t && n < MAX_KP + 8; t = strtok(NULL, " \t\r\n"))
            tok[n++] = t;
        if (n == 0) continue;
        if (strcmp(tok[0], "clock") == 0 && n > 1) {
            default_clock = parse_clock(tok[1]);
        } else if (strcmp(tok[0], "device") == 0 && n > 1) {
            int idx = atoi(tok[1]);
            if (idx < 0 || idx >= MAX_DEV) continue;
            device_t *d = &devices[idx];
            set_identity(d, tok + 2, n - 2);
            d->index = idx; d->parent = -1; d->slot = -1;
            if (idx + 1 > device_count) device_count = idx + 1;
        } else if (strcmp(tok[0], "mig") == 0 && n > 2) {
            int parent = atoi(tok[1]), slot = atoi(tok[2]);
            if (parent < 0 || parent >= MAX_DEV || slot < 0 || slot >= MAX_MIG) continue;
            device_t *m = &migs[parent][slot];
            set_identity(m, tok + 3, n - 3);
            m->index = parent; m->parent = parent; m->slot = slot;
            devices[parent].migs[slot] = m;
        } else if (strcmp(tok[0], "used") == 0 && n > 1) {
            device_t *d = lookup(tok[1]);
            if (d) parse_schedule(tok + 2, n - 2, &d->used);
        } else if (strcmp(tok[0], "process") == 0 && n > 2 && entry_count < MAX_ENTRIES) {
            proc_entry_t *e = &entries[entry_count++];
            snprintf(e->dev, sizeof e->dev, "%s", tok[1]);
            e->kind = strcmp(tok[2], "children") == 0 ? P_CHILDREN
                    : strcmp(tok[2], "descendants") == 0 ? P_DESCENDANTS : P_PID;
            e->pid = e->kind == P_PID ? (unsigned)strtoul(tok[2], NULL, 10) : 0;
            parse_schedule(tok + 3, n - 3, &e->s);
        } else if (strcmp(tok[0], "fault") == 0 && n > 2 && fault_count < MAX_FAULTS) {
            fault_t *ft = &faults[fault_count];
            snprintf(ft->dev, sizeof ft->dev, "%s", tok[1]);
            char *eq = strchr(tok[2], '=');
            if (!eq) continue;
            *eq = 0;
            ft->func = parse_func(tok[2]);
            ft->err = parse_error(eq + 1);
            const char *after = kv(tok + 3, n - 3, "after");
            ft->after = after ? atof(after) : -1e300;
            if (ft->func >= 0) fault_count++;
        }
    }
    fclose(f);
    return OK;
}

static void device_label(const device_t *d, char *out, size_t size) {
    if (d->parent >= 0) snprintf(out, size, "%d/%d", d->parent, d->slot);
    else snprintf(out, size, "%d", d->index);
}

static double device_x(const device_t *d, int clock) {
    if (clock == CLOCK_CALLS) return d->memory_calls > 0 ? (double)(d->memory_calls - 1) : 0.0;
    return now() - t0;
}

/* The error a fault injects into FUNC on device D (NULL: not device-specific), or OK. */
static int fault_for(const device_t *d, int func) {
    char label[16] = "";
    if (d) device_label(d, label, sizeof label);
    for (int i = 0; i < fault_count; i++) {
        const fault_t *ft = &faults[i];
        if (ft->func != func && ft->func != F_ALL) continue;
        if (strcmp(ft->dev, "*") != 0 && (!d || strcmp(ft->dev, label) != 0)) continue;
        double x = d ? device_x(d, default_clock) : now() - t0;
        if (x >= ft->after) return ft->err;
    }
    return OK;
}

static device_t *handle_ok(void *h) {
    for (int i = 0; i < MAX_DEV; i++) {
        if (h == &devices[i] && devices[i].present) return &devices[i];
        for (int j = 0; j < MAX_MIG; j++) if (h == &migs[i][j] && migs[i][j].present) return &migs[i][j];
    }
    return NULL;
}

#define GUARD(h, func) \
    if (!initialised) return E_UNINIT; \
    device_t *d = handle_ok(h); \
    if (!d) return E_INVALID; \
    { int e_ = fault_for(d, func); if (e_) return e_; }

nvmlReturn_t nvmlInitWithFlags(unsigned flags) {
    (void)flags;
    pthread_mutex_lock(&lock);
    int ret = load_scenario();
    if (ret == OK) { t0 = now(); int e = fault_for(NULL, F_INIT); if (e) ret = e; }
    if (ret == OK) initialised++;
    pthread_mutex_unlock(&lock);
    return ret;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (!initialised) return E_UNINIT;
    initialised--;
    return OK;
}

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case OK: return "Success";
    case E_NOT_SUPPORTED: return "Not Supported";
    case E_NO_PERMISSION: return "Insufficient Permissions";
    case E_GPU_LOST: return "GPU is lost";
    case E_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    default: return "Simulated Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned length) {
    snprintf(version, length, "999.99-nvmlsim");
    return OK;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned *count) {
    if (!initialised) return E_UNINIT;
    int e = fault_for(NULL, F_COUNT);
    if (e) return e;
    *count = (unsigned)device_count;
    return OK;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned index, void **handle) {
    if (!initialised) return E_UNINIT;
    if (index >= (unsigned)device_count || !devices[index].present) return E_INVALID;
    int e = fault_for(&devices[index], F_HANDLE);
    if (e) return e;
    *handle = &devices[index];
    return OK;
}

nvmlReturn_t nvmlDeviceGetIndex(void *h, unsigned *index) {
    GUARD(h, F_HANDLE);
    *index = (unsigned)d->index;
    return OK;
}

nvmlReturn_t nvmlDeviceGetName(void *h, char *name, unsigned length) {
    GUARD(h, F_NAME);
    snprintf(name, length, "%s", d->name[0] ? d->name : "nvmlsim GPU");
    return OK;
}

nvmlReturn_t nvmlDeviceGetUUID(void *h, char *uuid, unsigned length) {
    GUARD(h, F_UUID);
    if (d->uuid[0]) snprintf(uuid, length, "%s", d->uuid);
    else if (d->parent >= 0) snprintf(uuid, length, "MIG-nvmlsim-%d-%d", d->parent, d->slot);
    else snprintf(uuid, length, "GPU-nvmlsim-%d", d->index);
    return OK;
}

static nvmlReturn_t read_memory(void *h, int func, ull *total, ull *reserved, ull *used) {
    if (!initialised) return E_UNINIT;
    device_t *d = handle_ok(h);
    if (!d) return E_INVALID;
    pthread_mutex_lock(&lock);
    d->memory_calls++;
    pthread_mutex_unlock(&lock);
    int e = fault_for(d, F_MEMORY);
    if (!e && func == F_MEMORY_V2) e = fault_for(d, F_MEMORY_V2);
    if (e) {
        /* A refused call is not a reading: the next call sees the same x. */
        pthread_mutex_lock(&lock);
        d->memory_calls--;
        pthread_mutex_unlock(&lock);
        return e;
    }
    *total = d->total;
    *reserved = d->reserved;
    *used = evaluate(&d->used, device_x(d, d->used.clock == CLOCK_AGE ? CLOCK_TIME : d->used.clock));
    return OK;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(void *h, mem_v1_t *m) {
    ull total, reserved, used;
    nvmlReturn_t r = read_memory(h, F_MEMORY, &total, &reserved, &used);
    if (r) return r;
    m->total = total;
    m->used = used == NA ? NA : used + reserved;
    m->free = used == NA ? NA : total - used - reserved;
    return OK;
}

#ifndef NO_MEMORY_V2
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(void *h, mem_v2_t *m) {
    ull total, reserved, used;
    nvmlReturn_t r = read_memory(h, F_MEMORY_V2, &total, &reserved, &used);
    if (r) return r;
    m->total = total;
    m->reserved = reserved;
    m->used = used;
    m->free = used == NA ? NA : total - used - reserved;
    return OK;
}
#endif

/* --- processes ------------------------------------------------------------------------------ */

typedef struct { unsigned pid, ppid; double start_ticks; } pinfo_t;

static int scan_proc(pinfo_t *out, int max) {
    DIR *dir = opendir("/proc");
    if (!dir) return 0;
    int n = 0;
    struct dirent *ent;
    while ((ent = readdir(dir)) && n < max) {
        if (!isdigit((unsigned char)ent->d_name[0])) continue;
        char path[300], buf[1024];
        snprintf(path, sizeof path, "/proc/%s/stat", ent->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = 0;
        char *p = strrchr(buf, ')'); /* the command name may contain spaces and parens */
        if (!p) continue;
        char state;
        unsigned ppid;
        unsigned long long start = 0;
        /* fields after ")": state(3) ppid(4) ... starttime(22) */
        if (sscanf(p + 2, "%c %u %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
                   &state, &ppid, &start) < 3) continue;
        if (state == 'Z') continue; /* a zombie holds no GPU memory */
        out[n].pid = (unsigned)atoi(ent->d_name);
        out[n].ppid = ppid;
        out[n].start_ticks = (double)start;
        n++;
    }
    closedir(dir);
    return n;
}

static double process_age(const pinfo_t *p) {
    double uptime = 0;
    FILE *f = fopen("/proc/uptime", "r");
    if (f) { if (fscanf(f, "%lf", &uptime) != 1) uptime = 0; fclose(f); }
    double age = uptime - p->start_ticks / (double)sysconf(_SC_CLK_TCK);
    return age > 0 ? age : 0;
}

/* Fill the process list of device D into out[]; returns the count. */
static int collect(device_t *d, proc_v2_t *out, int max) {
    static pinfo_t procs[8192];
    int nprocs = -1;
    char label[16];
    device_label(d, label, sizeof label);
    int n = 0;
    for (int i = 0; i < entry_count && n < max; i++) {
        proc_entry_t *e = &entries[i];
        if (strcmp(e->dev, label) != 0) continue;
        if (e->kind == P_PID) {
            out[n].pid = e->pid;
            out[n].used = evaluate(&e->s, device_x(d, e->s.clock == CLOCK_AGE ? CLOCK_TIME : e->s.clock));
            out[n].gi = out[n].ci = 0xFFFFFFFFu;
            n++;
            continue;
        }
        if (nprocs < 0) nprocs = scan_proc(procs, 8192);
        unsigned roots[MAX_PROCS];
        int nroots = 1, scanned = 0;
        roots[0] = (unsigned)getpid();
        while (scanned < nroots && n < max) {
            unsigned parent = roots[scanned++];
            for (int j = 0; j < nprocs && n < max; j++) {
                if (procs[j].ppid != parent) continue;
                double x = e->s.clock == CLOCK_AGE ? process_age(&procs[j]) : device_x(d, e->s.clock);
                out[n].pid = procs[j].pid;
                out[n].used = evaluate(&e->s, x);
                out[n].gi = out[n].ci = 0xFFFFFFFFu;
                n++;
                if (e->kind == P_DESCENDANTS && nroots < MAX_PROCS) roots[nroots++] = procs[j].pid;
            }
        }
    }
    return n;
}

static nvmlReturn_t processes(void *h, unsigned *count, void *infos, int v1) {
    GUARD(h, F_PROCESSES);
    static proc_v2_t found[MAX_PROCS];
    pthread_mutex_lock(&lock);
    int n = collect(d, found, MAX_PROCS);
    pthread_mutex_unlock(&lock);
    if (*count < (unsigned)n || (!infos && n > 0)) { *count = (unsigned)n; return E_INSUFFICIENT_SIZE; }
    *count = (unsigned)n;
    for (int i = 0; i < n; i++) {
        if (v1) { ((proc_v1_t *)infos)[i].pid = found[i].pid; ((proc_v1_t *)infos)[i].used = found[i].used; }
        else ((proc_v2_t *)infos)[i] = found[i];
    }
    return OK;
}

#ifndef NO_V3
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(void *h, unsigned *count, proc_v2_t *infos) {
    return processes(h, count, infos, 0);
}
#endif
#ifndef NO_V2
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(void *h, unsigned *count, proc_v2_t *infos) {
    return processes(h, count, infos, 0);
}
#endif
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(void *h, unsigned *count, proc_v1_t *infos) {
    return processes(h, count, infos, 1);
}

/* --- MIG ------------------------------------------------------------------------------------ */

static int has_migs(const device_t *d) {
    for (int j = 0; j < MAX_MIG; j++) if (d->migs[j]) return 1;
    return 0;
}

nvmlReturn_t nvmlDeviceGetMigMode(void *h, unsigned *current, unsigned *pending) {
    GUARD(h, F_MIG);
    if (d->parent >= 0) return E_NOT_SUPPORTED;
    if (!has_migs(d)) return E_NOT_SUPPORTED; /* like a GPU without MIG support */
    *current = *pending = 1;
    return OK;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(void *h, unsigned *count) {
    GUARD(h, F_MIG);
    *count = MAX_MIG;
    return OK;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(void *h, unsigned index, void **mig) {
    GUARD(h, F_MIG);
    if (index >= MAX_MIG || !d->migs[index]) return E_NOT_FOUND;
    *mig = d->migs[index];
    return OK;
}

nvmlReturn_t nvmlDeviceIsMigDeviceHandle(void *h, unsigned *is_mig) {
    GUARD(h, F_MIG);
    *is_mig = d->parent >= 0;
    return OK;
}

nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(void *h, void **parent) {
    GUARD(h, F_MIG);
    if (d->parent < 0) return E_INVALID;
    *parent = &devices[d->parent];
    return OK;
}
