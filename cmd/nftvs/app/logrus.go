package app

import (
	"strings"

	"github.com/sirupsen/logrus"
	"k8s.io/klog/v2"
)

// logrusToKlog sends what github.com/moby/ipvs logs through logrus (its
// only user in nftvs) to klog, so that nftvs's log has one format. Its
// "Running modprobe ip_vs failed" warning is expected in nftvs's image,
// which has no modprobe: loadKernelModules has loaded ip_vs before, so
// that one is logged at V(2) only.
type logrusToKlog struct{}

func (logrusToKlog) Format(e *logrus.Entry) ([]byte, error) {
	kv := make([]any, 0, 2*len(e.Data))
	for k, v := range e.Data {
		kv = append(kv, k, v)
	}
	msg := "moby/ipvs: " + e.Message
	switch {
	case strings.HasPrefix(e.Message, "Running modprobe"):
		klog.V(2).InfoS(msg, kv...)
	case e.Level <= logrus.ErrorLevel:
		klog.ErrorS(nil, msg, kv...)
	default:
		klog.InfoS(msg, kv...)
	}
	return nil, nil // logged; logrus writes nothing
}

func init() { logrus.SetFormatter(logrusToKlog{}) }
