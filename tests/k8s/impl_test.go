package k8s

import (
	"fmt"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/apis/example"
	"k8s.io/apiserver/pkg/storage"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
)

// runGetListStreamMultiChunk is k8s's TestGetListStreamMultiChunk: lists served by etcd 3.7's
// RangeStream over several chunks, consistent, pinned to an exact revision and not older than
// one, never paginated.
func runGetListStreamMultiChunk(t *testing.T, f *fixture) {
	ctx, store := f.ctx, f.store
	kvRecorder := f.client.KV.(*storagetesting.KVRecorder)

	const podCount = 25
	for i := range podCount {
		pod := &example.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("pod-%02d", i)}}
		if err := store.Create(ctx, fmt.Sprintf("/pods/ns/pod-%02d", i), pod, &example.Pod{}, 0); err != nil {
			t.Fatal(err)
		}
	}

	streamedList := func(t *testing.T, rv string, rvMatch metav1.ResourceVersionMatch) *example.PodList {
		t.Helper()
		out := &example.PodList{}
		opts := storage.ListOptions{ResourceVersion: rv, ResourceVersionMatch: rvMatch, Predicate: storage.Everything, Recursive: true}
		if err := store.GetList(ctx, "/pods/", opts, out); err != nil {
			t.Fatalf("GetList failed: %v", err)
		}
		if streams := kvRecorder.GetStreamReadsAndReset(); streams == 0 {
			t.Error("expected the list to be served by RangeStream")
		}
		if out.Continue != "" || out.RemainingItemCount != nil {
			t.Errorf("streamed list must not paginate, got continue %q, remainingItemCount %v", out.Continue, out.RemainingItemCount)
		}
		return out
	}

	snapshot := streamedList(t, "", "")
	if len(snapshot.Items) != podCount {
		t.Errorf("consistent list returned %d items, want %d", len(snapshot.Items), podCount)
	}

	extraPod := &example.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "pod-extra"}}
	if err := store.Create(ctx, "/pods/ns/pod-extra", extraPod, &example.Pod{}, 0); err != nil {
		t.Fatal(err)
	}

	// A pinned stream returns the snapshot at the exact revision, not later writes.
	exact := streamedList(t, snapshot.ResourceVersion, metav1.ResourceVersionMatchExact)
	if len(exact.Items) != podCount {
		t.Errorf("exact list returned %d items, want %d", len(exact.Items), podCount)
	}
	if exact.ResourceVersion != snapshot.ResourceVersion {
		t.Errorf("exact list returned resourceVersion %s, want %s", exact.ResourceVersion, snapshot.ResourceVersion)
	}

	// An unpinned stream at a minimum revision serves the latest data.
	notOlder := streamedList(t, snapshot.ResourceVersion, "")
	if len(notOlder.Items) != podCount+1 {
		t.Errorf("notOlderThan list returned %d items, want %d", len(notOlder.Items), podCount+1)
	}
}

// runGetCurrentResourceVersion is k8s's TestGetCurrentResourceVersion: the store's current
// resource version is the server's revision, also after a write outside the resource.
func runGetCurrentResourceVersion(t *testing.T, f *fixture) {
	ctx, store := f.ctx, f.store
	versioner := storage.APIObjectVersioner{}
	key := "/pods/ns/pod-1"
	pod := &example.Pod{}
	if err := store.Create(ctx, key, &example.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "pod-1"}}, pod, 0); err != nil {
		t.Fatal(err)
	}
	podRV, err := versioner.ParseResourceVersion(pod.ResourceVersion)
	if err != nil {
		t.Fatal(err)
	}
	currentStorageRV, err := store.GetCurrentResourceVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if currentStorageRV != podRV {
		t.Fatalf("current RV %d, want the pod's %d", currentStorageRV, podRV)
	}

	// An unrelated write (k8s writes compact_rev_key; any key outside the resource does).
	resp, err := f.client.KV.Put(ctx, f.prefix+"/unrelated", pod.ResourceVersion)
	if err != nil {
		t.Fatal(err)
	}
	if currentStorageRV, err = store.GetCurrentResourceVersion(ctx); err != nil {
		t.Fatal(err)
	}
	if currentStorageRV != uint64(resp.Header.Revision) {
		t.Fatalf("current RV %d after an unrelated write, want the server's %d", currentStorageRV, resp.Header.Revision)
	}

	current := &example.Pod{}
	if err := store.Get(ctx, key, storage.GetOptions{}, current); err != nil {
		t.Fatal(err)
	}
	if current.ResourceVersion != pod.ResourceVersion {
		t.Fatalf("the pod's RV changed to %s, want %s", current.ResourceVersion, pod.ResourceVersion)
	}
}
