package k8s

import (
	"context"
	"testing"
	"time"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/apis/example"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/cacher"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
)

// TestWatchCacheConformance runs part of k8s.io/apiserver's conformance suite on the watch cache
// (pkg/storage/cacher), the layer kube-apiserver serves most reads and every watch from, on top
// of the etcd3 store, against etcd and concord: what it adds over the store is a long-running
// watch with progress notifications and, for consistent lists, etcd's watch progress requests.
// The cases are those of cacher_test.go that need none of the cacher's unexported fields, with
// its arguments (watch cache enabled, bookmarks expected).
func TestWatchCacheConformance(t *testing.T) {
	runSuite(t, cacherCases())
}

func cacherCases() []tcase {
	return []tcase{
		{"ListPaging", func(t *testing.T, b *backend) {
			f, c := b.setupCacher(t)
			storagetesting.RunTestListPaging(f.ctx, t, c)
		}},
		{"ConsistentList", func(t *testing.T, b *backend) {
			f, c := b.setupCacher(t)
			storagetesting.RunTestConsistentList(f.ctx, t, c, f.increaseRV(), true, true, true)
		}},
		{"GetListNonRecursive", func(t *testing.T, b *backend) {
			f, c := b.setupCacher(t)
			storagetesting.RunTestGetListNonRecursive(f.ctx, t, f.increaseRV(), c)
		}},
		{"Watch", func(t *testing.T, b *backend) {
			f, c := b.setupCacher(t)
			storagetesting.RunTestWatch(f.ctx, t, c)
		}},
		{"DeleteTriggerWatch", func(t *testing.T, b *backend) {
			f, c := b.setupCacher(t)
			storagetesting.RunTestDeleteTriggerWatch(f.ctx, t, c)
		}},
		{"WatchFromNonZero", func(t *testing.T, b *backend) {
			f, c := b.setupCacher(t)
			storagetesting.RunTestWatchFromNonZero(f.ctx, t, c)
		}},
		{"DelayedWatchDelivery", func(t *testing.T, b *backend) {
			f, c := b.setupCacher(t)
			storagetesting.RunTestDelayedWatchDelivery(f.ctx, t, c)
		}},
		{"WatcherTimeout", func(t *testing.T, b *backend) {
			f, c := b.setupCacher(t)
			storagetesting.RunTestWatcherTimeout(f.ctx, t, c)
		}},
		{"WatchDeleteEventObjectHaveLatestRV", func(t *testing.T, b *backend) {
			f, c := b.setupCacher(t)
			storagetesting.RunTestWatchDeleteEventObjectHaveLatestRV(f.ctx, t, c)
		}},
		{"WatchInitializationSignal", func(t *testing.T, b *backend) {
			f, c := b.setupCacher(t)
			storagetesting.RunTestWatchInitializationSignal(f.ctx, t, c)
		}},
		{"WatchDispatchBookmarkEvents", func(t *testing.T, b *backend) {
			f, c := b.setupCacher(t)
			storagetesting.RunTestWatchDispatchBookmarkEvents(f.ctx, t, c, true)
		}},
		{"WatchBookmarksWithCorrectResourceVersion", func(t *testing.T, b *backend) {
			f, c := b.setupCacher(t)
			storagetesting.RunTestOptionalWatchBookmarksWithCorrectResourceVersion(f.ctx, t, c)
		}},
		{"SendInitialEventsBackwardCompatibility", func(t *testing.T, b *backend) {
			f, c := b.setupCacher(t)
			storagetesting.RunSendInitialEventsBackwardCompatibility(f.ctx, t, c)
		}},
		{"WatchSemantics", func(t *testing.T, b *backend) {
			// Its RV=1 scenarios watch from revision 1, which a watch cache started on
			// a server with history answers with 410 Gone (its window starts at its
			// first list), as on etcd: a fresh server, as k8s's test has.
			f, c := b.fresh(t).setupCacher(t)
			storagetesting.RunWatchSemantics(f.ctx, t, createWrapper{c})
		}},
		{"WatchSemanticInitialEventsExtended", func(t *testing.T, b *backend) {
			f, c := b.setupCacher(t)
			storagetesting.RunWatchSemanticInitialEventsExtended(f.ctx, t, createWrapper{c})
		}},
		{"WatchListMatchSingle", func(t *testing.T, b *backend) {
			f, c := b.setupCacher(t)
			storagetesting.RunWatchListMatchSingle(f.ctx, t, createWrapper{c})
		}},
	}
}

// createWrapper is cacher_test.go's: Create returns once the watch cache serves the object, as
// the semantics tests assume.
type createWrapper struct{ storage.Interface }

func (c createWrapper) Create(ctx context.Context, key string, obj, out runtime.Object, ttl uint64) error {
	if err := c.Interface.Create(ctx, key, obj, out, ttl); err != nil {
		return err
	}
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, wait.ForeverTestTimeout, true, func(ctx context.Context) (bool, error) {
		current := &example.Pod{}
		err := c.Interface.Get(ctx, key, storage.GetOptions{ResourceVersion: "0"}, current)
		if storage.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		return apiequality.Semantic.DeepEqual(current, out), nil
	})
}

// setupCacher is cacher_test.go's testSetup on b's server: a watch cache of example Pods over a
// new etcd3 store (setup), waited for until it is ready, behind the delegator that picks the cache
// or the store for each call as kube-apiserver does.
func (b *backend) setupCacher(t *testing.T) (*fixture, storage.Interface) {
	t.Helper()
	f := b.setup(t)
	indexers := cache.Indexers{}
	c, err := cacher.NewCacherFromConfig(cacher.Config{
		Storage:             f.store,
		Versioner:           storage.APIObjectVersioner{},
		GroupResource:       f.groupResource,
		EventsHistoryWindow: cacher.DefaultEventFreshDuration,
		ResourcePrefix:      f.resPrefix,
		KeyFunc:             func(obj runtime.Object) (string, error) { return storage.NamespaceKeyFunc(f.resPrefix, obj) },
		GetAttrsFunc:        podAttrs,
		NewFunc:             func() runtime.Object { return &example.Pod{} },
		NewListFunc:         func() runtime.Object { return &example.PodList{} },
		Indexers:            &indexers,
		Codec:               f.codec,
		Clock:               clock.RealClock{},
	})
	if err != nil {
		t.Fatalf("Failed to initialize cacher: %v", err)
	}
	t.Cleanup(c.Stop)
	if err := c.Wait(f.ctx); err != nil {
		t.Fatal(err)
	}
	d := cacher.NewCacheDelegator(c, f.store)
	t.Cleanup(d.Stop)
	return f, d
}

// podAttrs is cacher_test.go's GetPodAttrs.
func podAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	pod, ok := obj.(*example.Pod)
	if !ok {
		return nil, nil, errNotPod
	}
	return labels.Set(pod.Labels), fields.Set{
		"spec.nodeName":      pod.Spec.NodeName,
		"spec.restartPolicy": string(pod.Spec.RestartPolicy),
		"status.phase":       string(pod.Status.Phase),
		"metadata.name":      pod.Name,
		"metadata.namespace": pod.Namespace,
	}, nil
}
