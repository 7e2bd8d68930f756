package proxier

import (
	"context"
	"fmt"
	"strconv"
	"testing"

	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/watchlist"
)

// pagedSlices serves n EndpointSlices in pages of the limit asked for,
// as the API server does for a consistent read, and records the options
// of every list.
type pagedSlices struct {
	n     int
	asked []metav1.ListOptions
	pages []*discovery.EndpointSliceList
}

func (p *pagedSlices) List(o metav1.ListOptions) (runtime.Object, error) {
	p.asked = append(p.asked, o)
	from := 0
	if o.Continue != "" {
		from, _ = strconv.Atoi(o.Continue)
	}
	to := min(p.n, from+int(o.Limit))
	if o.Limit == 0 {
		to = p.n
	}
	page := &discovery.EndpointSliceList{ListMeta: metav1.ListMeta{ResourceVersion: "42"}}
	for i := from; i < to; i++ {
		svc := makeService("ns", fmt.Sprintf("svc-%d", i))
		s := namedSlice(svc.Name, httpSlice(svc, ready(fmt.Sprintf("10.244.0.%d", i%250+1), "node-b")))
		s.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "endpointslice-controller"}}
		page.Items = append(page.Items, *s)
	}
	if to < p.n {
		page.Continue = strconv.Itoa(to)
	}
	p.pages = append(p.pages, page)
	return page, nil
}

func (p *pagedSlices) Watch(metav1.ListOptions) (watch.Interface, error) { return watch.NewFake(), nil }

// TestStrippedPages: the informers' lists are consistent reads in pages
// of 500, each page stripped before the next is asked for, handed over
// as one list of stripped objects that hold no page.
func TestStrippedPages(t *testing.T) {
	src := &pagedSlices{n: 1203}
	lw := strippedPages(src).(cache.ListerWatcherWithContext)
	// As the reflector asks for its first list.
	got, err := lw.ListWithContext(context.Background(), metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		t.Fatal(err)
	}
	if len(src.asked) != 3 {
		t.Fatalf("%d pages asked for, want 3", len(src.asked))
	}
	for i, o := range src.asked {
		wantContinue := []string{"", "500", "1000"}[i]
		if o.ResourceVersion != "" || o.Limit != listPageSize || o.Continue != wantContinue {
			t.Errorf("page %d asked with %+v", i, o)
		}
	}
	l := got.(*strippedList)
	if len(l.Items) != 1203 || l.ResourceVersion != "42" || l.Continue != "" {
		t.Fatalf("list of %d items at %q (continue %q)", len(l.Items), l.ResourceVersion, l.Continue)
	}
	for i, it := range l.Items {
		c, ok := it.(*cachedSlice)
		if !ok || c.ManagedFields != nil || c.Name != fmt.Sprintf("svc-%d", i) || len(c.eps.endpoints) != 1 {
			t.Fatalf("item %d: %#v", i, it)
		}
	}
	// Nothing kept points into a page: clearing the pages changes no item.
	for _, p := range src.pages {
		clear(p.Items)
	}
	if c := l.Items[7].(*cachedSlice); c.Name != "svc-7" || c.Namespace != "ns" {
		t.Errorf("an item changed with its page: %+v", c.ObjectMeta)
	}
}

type noWatchList struct{ *pagedSlices }

func (noWatchList) IsWatchListSemanticsUnSupported() bool { return true }

// A source that cannot stream watch-lists (the fake clientset) says so
// through the paging wrapper too; otherwise the reflector waits for a
// stream that never comes.
func TestStrippedPagesKeepsWatchListSemantics(t *testing.T) {
	if watchlist.DoesClientNotSupportWatchListSemantics(strippedPages(&pagedSlices{})) {
		t.Error("a source with watch-lists lost them")
	}
	if !watchlist.DoesClientNotSupportWatchListSemantics(strippedPages(noWatchList{&pagedSlices{}})) {
		t.Error("a source without watch-lists gained them")
	}
}
