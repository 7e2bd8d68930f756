package proxier

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// listPageSize is how many objects a page of the informers' lists holds
// (client-go's own default page size).
const listPageSize = 500

// strippedPages lists what lw lists page by page, each page's objects
// stripped (StripUnread) before the next page is asked for, and hands the
// informer the stripped objects as one list. It watches as lw does.
//
// Why: an informer's first list is asked for at resourceVersion "0",
// which the API server serves from its watch cache whole, ignoring the
// page size (10,001 EndpointSlices in one answer at 10k Services), and
// client-go's reflector keeps every object of a list as decoded until
// it has them all; only then are they stripped. Decoded whole, the
// Services and EndpointSlices of 10k Services were about 75 MB held at
// once beside the answers' bytes (issue 27: nftvs's largest live heap of
// a restart, 72 MB, was this list, not its sync), and the Go GC lets
// the heap grow to twice what it last found live. Here at most one page
// is held as decoded.
//
// The pages are a consistent read (resourceVersion ""), which since
// Kubernetes 1.34 the API server serves from its watch cache, page by
// page (ConsistentListFromCache, ListFromCacheSnapshot): no more load on
// etcd than the lists at "0". A kube-proxy of 1.36 runs against API
// servers of 1.36 or later (the version skew policy).
func strippedPages(lw cache.ListerWatcher) cache.ListerWatcher {
	inner := cache.ToListerWatcherWithContext(lw)
	// What lw says of watch-list streams (a fake clientset cannot serve
	// them) holds for this one too.
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		// The reflector's own pager must not page (it would ask for a
		// limit at resourceVersion "0"); the pages are this list's.
		DisableChunking: true,
		ListWithContextFunc: func(ctx context.Context, options metav1.ListOptions) (runtime.Object, error) {
			return listStripped(ctx, inner, options)
		},
		WatchFuncWithContext: func(ctx context.Context, options metav1.ListOptions) (watch.Interface, error) {
			return inner.WatchWithContext(ctx, options)
		},
	}, lw)
}

func listStripped(ctx context.Context, lw cache.ListerWatcherWithContext, options metav1.ListOptions) (runtime.Object, error) {
	options.ResourceVersion, options.ResourceVersionMatch = "", ""
	options.Limit, options.Continue = listPageSize, ""
	out := &strippedList{}
	for {
		page, err := lw.ListWithContext(ctx, options)
		if err != nil {
			return nil, err
		}
		lm, err := meta.ListAccessor(page)
		if err != nil {
			return nil, fmt.Errorf("list page: %w", err)
		}
		// Each item copied out of the page (WithAlloc), so that the
		// objects kept do not hold the page's array.
		items, err := meta.ExtractListWithAlloc(page)
		if err != nil {
			return nil, fmt.Errorf("list page: %w", err)
		}
		for _, it := range items {
			s, err := StripUnread(it)
			if err != nil {
				return nil, err
			}
			out.Items = append(out.Items, s.(runtime.Object))
		}
		// The pages of one list are one snapshot: every page has its
		// resource version.
		out.ResourceVersion = lm.GetResourceVersion()
		if lm.GetContinue() == "" {
			return out, nil
		}
		options.Continue = lm.GetContinue()
	}
}

// strippedList is a list of stripped objects, as the reflector takes a
// list (meta.ExtractList reads Items).
type strippedList struct {
	metav1.TypeMeta
	metav1.ListMeta
	Items []runtime.Object
}

func (l *strippedList) DeepCopyObject() runtime.Object {
	out := &strippedList{TypeMeta: l.TypeMeta}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	out.Items = make([]runtime.Object, len(l.Items))
	for i, o := range l.Items {
		out.Items[i] = o.DeepCopyObject()
	}
	return out
}
