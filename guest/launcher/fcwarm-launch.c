// fcwarm-launch: the entrypoint of a parked container (docs/docker-runtime.md, "Parked containers").
//
// A snapshot build creates and starts containers whose entrypoint is this program, bind-mounted read-only at
// /.fcwarm/launch, with their launch channel (a directory of the VM holding two FIFOs, `spec` and `ack`)
// bind-mounted read-only at /.fcwarm/chan. It waits until the guest agent's `launch` op hands it a launch spec
// through `spec`, applies it (user, working directory, environment) and execve()s the command, so the
// command is PID 1 of the container and Docker's logs, wait, exit codes and signals keep their meaning.
//
// Spec (written by the agent, read to EOF): "fcwarm-launch/1" NUL, then records KEY NUL VALUE NUL with KEY one
// of `arg` (argv, in order, at least one), `env` (NAME=value, in order; later ones win), `cwd` (absolute),
// `user` (user[:group], names from the container's /etc/passwd and /etc/group, or numeric ids), `hostfile` (a file
// to rewrite with the current hostname first, /etc/hostname in a container).
// Ack (read by the agent): the FIFO is opened close-on-exec, so a successful execve() closes it without a byte;
// on any error the message is written there and to stderr (`docker logs`), and the launcher exits 127.
//
// An open for writing without data (the agent's readiness probe) is ignored: the launcher waits again.
// Static, no allocation-heavy libraries, no NSS: user and group names are looked up by parsing the files.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_SPEC (256 * 1024)
#define MAX_ITEMS 1024
#define MAX_GROUPS 64
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static int ack_fd = -1;

static void fail(const char* fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char* fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  dprintf(2, "fcwarm-launch: %s\n", msg);
  if (ack_fd >= 0) {
    ssize_t n = write(ack_fd, msg, strlen(msg));
    (void)n;
  }
  _exit(127);
}

// Reads one spec: waits for a writer, reads to EOF. Returns its length (> 0); an empty one (a probe) is
// skipped.
static size_t read_spec(const char* path, char* buf) {
  for (;;) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) fail("open %s: %s", path, strerror(errno));
    size_t len = 0;
    for (;;) {
      struct pollfd p = {.fd = fd, .events = POLLIN};
      if (poll(&p, 1, -1) < 0) {
        if (errno == EINTR) continue;
        fail("poll %s: %s", path, strerror(errno));
      }
      ssize_t n = read(fd, buf + len, MAX_SPEC - len);
      if (n > 0) {
        len += (size_t)n;
        if (len >= MAX_SPEC) fail("launch spec larger than %d bytes", MAX_SPEC);
        continue;
      }
      if (n == 0) break;  // every writer closed
      if (errno != EAGAIN && errno != EINTR) fail("read %s: %s", path, strerror(errno));
    }
    close(fd);
    if (len > 0) return len;
  }
}

struct user {
  uid_t uid;
  gid_t gid;
  char home[PATH_MAX];
  char name[256];
  int named;  // found in /etc/passwd
};

static int all_digits(const char* s) {
  if (!*s) return 0;
  for (; *s; ++s)
    if (*s < '0' || *s > '9') return 0;
  return 1;
}

// Splits a colon-separated line in place; returns the number of fields (at most max).
static int split(char* line, char** f, int max) {
  int n = 0;
  f[n++] = line;
  for (char* p = line; *p && n < max; ++p) {
    if (*p == ':') {
      *p = 0;
      f[n++] = p + 1;
    }
  }
  return n;
}

static void chomp(char* s) {
  size_t n = strlen(s);
  while (n && (s[n - 1] == '\n' || s[n - 1] == '\r')) s[--n] = 0;
}

static void lookup_user(const char* spec, struct user* u, gid_t* groups, int* ngroups) {
  char who[512];
  snprintf(who, sizeof who, "%s", spec);
  char* group = strchr(who, ':');
  if (group) *group++ = 0;
  memset(u, 0, sizeof *u);
  strcpy(u->home, "/");
  int numeric = all_digits(who);
  if (!*who) strcpy(who, "0"), numeric = 1;
  if (numeric) u->uid = (uid_t)strtoul(who, NULL, 10);
  FILE* pw = fopen("/etc/passwd", "re");
  char line[4096];
  if (pw) {
    while (fgets(line, sizeof line, pw)) {
      chomp(line);
      char* f[7];
      if (split(line, f, 7) < 7) continue;
      if (numeric ? (all_digits(f[2]) && (uid_t)strtoul(f[2], NULL, 10) == u->uid) : strcmp(f[0], who) == 0) {
        u->uid = (uid_t)strtoul(f[2], NULL, 10);
        u->gid = (gid_t)strtoul(f[3], NULL, 10);
        snprintf(u->home, sizeof u->home, "%s", *f[5] ? f[5] : "/");
        snprintf(u->name, sizeof u->name, "%s", f[0]);
        u->named = 1;
        break;
      }
    }
    fclose(pw);
  }
  if (!numeric && !u->named) fail("unable to find user %s: no matching entries in passwd file", who);
  int explicit_group = group && *group;
  if (explicit_group) {
    if (all_digits(group)) {
      u->gid = (gid_t)strtoul(group, NULL, 10);
    } else {
      int found = 0;
      FILE* gr = fopen("/etc/group", "re");
      if (gr) {
        while (fgets(line, sizeof line, gr)) {
          chomp(line);
          char* f[4];
          if (split(line, f, 4) < 3) continue;
          if (strcmp(f[0], group) == 0) {
            u->gid = (gid_t)strtoul(f[2], NULL, 10);
            found = 1;
            break;
          }
        }
        fclose(gr);
      }
      if (!found) fail("unable to find group %s: no matching entries in group file", group);
    }
  }
  *ngroups = 0;
  groups[(*ngroups)++] = u->gid;
  // Supplementary groups: the user's memberships in /etc/group (as Docker does), unless a group was named.
  if (!u->named || explicit_group) return;
  FILE* gr = fopen("/etc/group", "re");
  if (!gr) return;
  while (fgets(line, sizeof line, gr) && *ngroups < MAX_GROUPS) {
    chomp(line);
    char* f[4];
    if (split(line, f, 4) < 4) continue;
    for (char* m = strtok(f[3], ","); m; m = strtok(NULL, ",")) {
      if (strcmp(m, u->name) == 0) {
        gid_t g = (gid_t)strtoul(f[2], NULL, 10);
        if (g != u->gid) groups[(*ngroups)++] = g;
        break;
      }
    }
  }
  fclose(gr);
}

// Sets NAME=value in env (replacing an entry of the same name).
static void env_set(char** env, int* n, char* entry) {
  size_t k = strcspn(entry, "=");
  for (int i = 0; i < *n; ++i) {
    if (strncmp(env[i], entry, k) == 0 && env[i][k] == '=') {
      env[i] = entry;
      return;
    }
  }
  if (*n >= MAX_ITEMS) fail("more than %d environment variables", MAX_ITEMS);
  env[(*n)++] = entry;
}

static const char* env_get(char** env, int n, const char* name) {
  size_t k = strlen(name);
  for (int i = 0; i < n; ++i)
    if (strncmp(env[i], name, k) == 0 && env[i][k] == '=') return env[i] + k + 1;
  return NULL;
}

static void mkdir_p(const char* path) {
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s", path);
  for (char* s = p + 1; *s; ++s) {
    if (*s == '/') {
      *s = 0;
      mkdir(p, 0755);
      *s = '/';
    }
  }
  mkdir(p, 0755);
}

// execve with a PATH search in the command's own environment (execvpe semantics, no shell fallback).
static void exec_command(char** argv, char** env, int nenv) {
  const char* file = argv[0];
  if (!*file) fail("exec: empty command");
  if (strchr(file, '/')) {
    execve(file, argv, env);
    fail("exec: \"%s\": %s", file, strerror(errno));
  }
  const char* path = env_get(env, nenv, "PATH");
  if (!path) path = DEFAULT_PATH;
  int saw_eacces = 0;
  char candidate[PATH_MAX];
  const char* p = path;
  for (;;) {
    const char* end = strchr(p, ':');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == 0) {
      snprintf(candidate, sizeof candidate, "%s", file);
    } else {
      snprintf(candidate, sizeof candidate, "%.*s/%s", (int)len, p, file);
    }
    execve(candidate, argv, env);
    if (errno == EACCES) saw_eacces = 1;
    else if (errno != ENOENT && errno != ENOTDIR)
      fail("exec: \"%s\": %s", candidate, strerror(errno));
    if (!end) break;
    p = end + 1;
  }
  if (saw_eacces) fail("exec: \"%s\": permission denied", file);
  fail("exec: \"%s\": executable file not found in $PATH", file);
}

int main(int argc, char** argv) {
  const char* dir = argc > 1 ? argv[1] : "/.fcwarm/chan";
  char spec_path[PATH_MAX], ack_path[PATH_MAX];
  snprintf(spec_path, sizeof spec_path, "%s/spec", dir);
  snprintf(ack_path, sizeof ack_path, "%s/ack", dir);
  static char buf[MAX_SPEC + 1];
  size_t len = read_spec(spec_path, buf);
  buf[len] = 0;
  // The agent holds the reading end open before it writes the spec; without it, there is nobody to tell.
  ack_fd = open(ack_path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);

  static char* args[MAX_ITEMS + 1];
  static char* env[MAX_ITEMS + 4];
  int nargs = 0, nenv = 0;
  const char* cwd = "/";
  const char* user = "0";
  const char* hostfile = NULL;
  static const char kMagic[] = "fcwarm-launch/1";
  if (len < sizeof kMagic || memcmp(buf, kMagic, sizeof kMagic) != 0) fail("launch spec: bad header");
  // HOSTNAME first, as Docker sets it; the VM's hostname now (the clone's), not the one the container was
  // created with. The spec's env may override it.
  static char hostname_env[300];
  char host[256] = "";
  if (gethostname(host, sizeof host - 1) == 0) {
    snprintf(hostname_env, sizeof hostname_env, "HOSTNAME=%s", host);
    env[nenv++] = hostname_env;
  }
  size_t i = sizeof kMagic;
  while (i < len) {
    char* key = buf + i;
    size_t kl = strnlen(key, len - i);
    if (i + kl >= len) fail("launch spec: record without value");
    char* value = key + kl + 1;
    size_t vl = strnlen(value, len - (i + kl + 1));
    if (i + kl + 1 + vl >= len) fail("launch spec: value not terminated");
    i += kl + vl + 2;
    if (strcmp(key, "arg") == 0) {
      if (nargs >= MAX_ITEMS) fail("launch spec: more than %d arguments", MAX_ITEMS);
      args[nargs++] = value;
    } else if (strcmp(key, "env") == 0) {
      if (!strchr(value, '=')) fail("launch spec: env entry without '='");
      env_set(env, &nenv, value);
    } else if (strcmp(key, "cwd") == 0) {
      cwd = value;
    } else if (strcmp(key, "user") == 0) {
      user = value;
    } else if (strcmp(key, "hostfile") == 0) {
      hostfile = value;
    } else {
      fail("launch spec: unknown record '%s'", key);
    }
  }
  if (nargs == 0) fail("no command specified");
  args[nargs] = NULL;
  if (*cwd != '/') fail("working directory '%s' is not absolute", cwd);

  struct user u;
  gid_t groups[MAX_GROUPS];
  int ngroups = 0;
  lookup_user(user, &u, groups, &ngroups);
  static char path_env[] = "PATH=" DEFAULT_PATH;
  if (!env_get(env, nenv, "PATH")) env_set(env, &nenv, path_env);
  static char home_env[PATH_MAX + 8];
  if (!env_get(env, nenv, "HOME")) {
    snprintf(home_env, sizeof home_env, "HOME=%s", u.home);
    env_set(env, &nenv, home_env);
  }
  env[nenv] = NULL;

  // Docker wrote the creating host's name into /etc/hostname; keep it equal to the name the process sees.
  if (*host && hostfile) {
    int fd = open(hostfile, O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd >= 0) {
      dprintf(fd, "%s\n", host);
      close(fd);
    }
  }
  struct stat st;
  if (stat(cwd, &st) != 0) mkdir_p(cwd);  // Docker creates a missing working directory too
  // As root (a parked container's launcher always is): the user's groups, gid and uid. Otherwise (a test) only
  // what the process may change.
  if (getuid() == 0 && setgroups((size_t)ngroups, groups) != 0) fail("setgroups: %s", strerror(errno));
  if (getgid() != u.gid && setgid(u.gid) != 0) fail("setgid %u: %s", (unsigned)u.gid, strerror(errno));
  if (getuid() != u.uid && setuid(u.uid) != 0) fail("setuid %u: %s", (unsigned)u.uid, strerror(errno));
  if (chdir(cwd) != 0) fail("chdir to cwd (\"%s\") set in config.json failed: %s", cwd, strerror(errno));
  exec_command(args, env, nenv);
  return 127;
}
