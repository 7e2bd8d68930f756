// Package e2enetwork is upstream's e2e.test (k8s.io/kubernetes/test/e2e)
// linked with the [sig-network] suites only: the same framework, the same
// TestMain and RunE2ETests, the same test code, without the storage, apps,
// DRA, ... suites a single-node Service run never selects, so that it
// builds in a fraction of the time. build.sh e2e-network.test builds it.
package e2enetwork
