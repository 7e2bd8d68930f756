// Package healthcheck serves kube-proxy's health checks
// (pkg/proxy/healthcheck): the proxy's /healthz and /livez
// (HealthServer), and the health check node ports of
// externalTrafficPolicy: Local Services (ServiceHealthServers). It is
// told about syncs and changes by the command and about local endpoints
// by the proxier's sync results; it reads nothing from the kernel or the
// API server itself, so a busy proxy still answers at once.
package healthcheck
