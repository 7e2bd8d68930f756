package proxier

// SyncStep is the kernel subsystem a step of a sync programs.
type SyncStep string

const (
	StepNFTables  SyncStep = "nftables"
	StepIPVS      SyncStep = "ipvs"
	StepAddresses SyncStep = "addresses" // kube-ipvs0 and its addresses
)

// StepError is a failed step of a sync: callers tell the steps apart with
// errors.As, not by the message. The message is the step's prefix and the
// error, as the logs have always shown it ("nftables: ...", "ipvs: ...",
// "kube-ipvs0: ...", "addresses of kube-ipvs0: ...").
type StepError struct {
	Step SyncStep
	// Prefix starts the message.
	Prefix string
	Err    error
}

func (e *StepError) Error() string { return e.Prefix + ": " + e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }
