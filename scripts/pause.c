/* The pod sandbox ("pause") process of the test bed's node: it holds the pod's namespaces, reaps
 * orphans and exits on SIGTERM or SIGINT. No registry is reachable here, so the node cannot pull
 * registry.k8s.io/pause; scripts/build-images.sh builds this one statically into an image of its own. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
