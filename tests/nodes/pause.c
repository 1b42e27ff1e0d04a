/*
 * The sandbox ("pause") container of the lab's kubelets: holds the pod's
 * namespaces and does nothing until told to stop. Built statically by
 * scripts/nodes.sh into a one-file image; no registry needed.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

/* As PID 1 of the pod, reap what is re-parented to us. */
static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    signal(SIGCHLD, reap);
    for (;;) {
        pause();
    }
    return 0;
}
