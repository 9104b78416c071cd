package k8s

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/api/apitesting"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apiserver/pkg/apis/example"
	examplev1 "k8s.io/apiserver/pkg/apis/example/v1"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/etcd3"
	etcdfeature "k8s.io/apiserver/pkg/storage/feature"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	"k8s.io/apiserver/pkg/storage/value"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
	"k8s.io/utils/clock"
)

// The scheme and codec of k8s's etcd3 tests: the example API group's Pod.
var (
	scheme = runtime.NewScheme()
	codecs = serializer.NewCodecFactory(scheme)
)

// testValuePrefix is what the default test transformer puts before every stored value (k8s's
// defaultTestPrefix), so a test can check that values go through the transformer.
const testValuePrefix = "test!"

// maxLimit is the largest page etcd3's store asks for (etcd3.maxLimit, unexported).
const maxLimit = 10000

// caseTimeout bounds one case; the slowest takes about 6 s.
const caseTimeout = 2 * time.Minute

func init() {
	metav1.AddToGroupVersion(scheme, metav1.SchemeGroupVersion)
	utilruntime.Must(example.AddToScheme(scheme))
	utilruntime.Must(examplev1.AddToScheme(scheme))
}

// errNotPod is podAttrs's error for an object of another type.
var errNotPod = errors.New("not a pod")

// TestStorageConformance runs k8s.io/apiserver's storage.Interface conformance suite on k8s's
// etcd3 store against etcd and against concord (see the package doc).
func TestStorageConformance(t *testing.T) {
	runSuite(t, cases())
}

// runSuite runs cs against each target (etcd, then concord, then concord's split topology),
// each on its own servers, as subtests <target>/<case>. Nothing is skipped: every case passes on
// etcd 3.7.3 and must pass on concord.
func runSuite(t *testing.T, cs []tcase) {
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			shared := &backend{tg: tg, endpoints: tg.start(t, tg.im)}
			// A compaction is server-wide: the cases that compact share a second server, so
			// that the others can watch from revision 1 as on k8s's fresh etcd.
			var compactingServer *backend
			for _, c := range cs {
				if compacting[c.name] && compactingServer == nil {
					compactingServer = &backend{tg: tg, endpoints: tg.start(t, tg.im)}
				}
			}
			for _, c := range cs {
				t.Run(c.name, func(t *testing.T) {
					b := shared
					if compacting[c.name] {
						b = compactingServer
					}
					c.run(t, b)
				})
			}
		})
	}
}

// tcase is one of k8s's store or watcher tests.
type tcase struct {
	name string
	run  func(t *testing.T, b *backend)
}

// compacting names the cases that compact the server's history.
var compacting = map[string]bool{
	"List/rangeStream=false":       true,
	"List/rangeStream=true":        true,
	"CompactRevision":              true,
	"ListInconsistentContinuation": true,
	"WatchFromZero":                true,
}

// cases mirrors the Test functions (and their t.Run cases) of k8s.io/apiserver/pkg/storage/etcd3's
// store_test.go and watcher_test.go that exercise the storage contract through exported API, in
// their order and with their arguments and feature gates, plus TestGetListStreamMultiChunk and
// TestGetCurrentResourceVersion (runGetListStreamMultiChunk, runGetCurrentResourceVersion), which
// test the server through exported API only. Left out: the implementation-specific
// tests that reach into the store's unexported fields (TestPrefix, TestPrepareKey,
// TestLeaseMaxObjectCount, TestWatchErrorIncorrectConfiguration, ...), the ones that need a server
// without RangeStream or a fake client (the *FallsBackToPaginated, metrics and WatchChanSync
// tests), and the benchmarks.
func cases() []tcase {
	cs := []tcase{
		{"Create", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestCreate(f.ctx, t, f.store, f.checkStorageInvariants())
		}},
		{"CreateWithTTL", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestCreateWithTTL(f.ctx, t, f.store)
		}},
		{"CreateWithKeyExist", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestCreateWithKeyExist(f.ctx, t, f.store)
		}},
		{"Get", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestGet(f.ctx, t, f.store)
		}},
		{"UnconditionalDelete", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestUnconditionalDelete(f.ctx, t, f.store)
		}},
		{"ConditionalDelete", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestConditionalDelete(f.ctx, t, f.store)
		}},
		{"DeleteWithSuggestion", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestDeleteWithSuggestion(f.ctx, t, f.store)
		}},
		{"DeleteWithSuggestionAndConflict", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestDeleteWithSuggestionAndConflict(f.ctx, t, f.store)
		}},
		{"DeleteWithSuggestionOfDeletedObject", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestDeleteWithSuggestionOfDeletedObject(f.ctx, t, f.store)
		}},
		{"ValidateDeletionWithSuggestion", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestValidateDeletionWithSuggestion(f.ctx, t, f.store)
		}},
		{"ValidateDeletionWithOnlySuggestionValid", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestValidateDeletionWithOnlySuggestionValid(f.ctx, t, f.store)
		}},
		{"DeleteWithConflict", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestDeleteWithConflict(f.ctx, t, f.store)
		}},
		{"DeleteWithConflictAndMissingExpectedTransformOrDecodeError", func(t *testing.T, b *backend) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
			codec := &failingCodec{Codec: apitesting.TestCodec(codecs, examplev1.SchemeGroupVersion)}
			f := b.setup(t, withCodec(codec))
			storagetesting.RunTestDeleteWithConflictAndMissingExpectedTransformOrDecodeError(f.ctx, t, f.store, codec.setFailing)
		}},
		{"DeleteWithConflictAndExpectedTransformError", func(t *testing.T, b *backend) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
			transformer := &failingTransformer{Transformer: newTestTransformer()}
			f := b.setup(t, withTransformer(transformer))
			storagetesting.RunTestDeleteExpectedTransformOrDecodeError(f.ctx, t, f.store, transformer.setFailing)
		}},
		{"DeleteWithConflictAndExpectedDecodeError", func(t *testing.T, b *backend) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
			codec := &failingCodec{Codec: apitesting.TestCodec(codecs, examplev1.SchemeGroupVersion)}
			f := b.setup(t, withCodec(codec))
			storagetesting.RunTestDeleteExpectedTransformOrDecodeError(f.ctx, t, f.store, codec.setFailing)
		}},
		{"DeleteWithSuggestionAndMissingExpectedTransformOrDecodeFailure", func(t *testing.T, b *backend) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
			f := b.setup(t)
			storagetesting.RunTestDeleteWithSuggestionAndMissingExpectedTransformOrDecodeError(f.ctx, t, f.store)
		}},
		{"PreconditionalDeleteWithSuggestion", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestPreconditionalDeleteWithSuggestion(f.ctx, t, f.store)
		}},
		{"PreconditionalDeleteWithSuggestionPass", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestPreconditionalDeleteWithOnlySuggestionPass(f.ctx, t, f.store)
		}},
		{"ListPaging", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestListPaging(f.ctx, t, f.store)
		}},
		{"GetListNonRecursive", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestGetListNonRecursive(f.ctx, t, f.increaseRV(), f.store)
		}},
		{"GetListRecursivePrefix", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestGetListRecursivePrefix(f.ctx, t, f.store)
		}},
		{"KeySchema", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestKeySchema(f.ctx, t, f.store)
		}},
		{"GetListWithErrorAggregation", func(t *testing.T, b *backend) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
			f := b.setup(t, withoutPrefix())
			s := etcd3.NewStoreWithUnsafeCorruptObjectDeletion(f.store, f.groupResource)
			storagetesting.RunTestGetListWithErrorAggregation(f.ctx, t, f.transformerOverride(s), corruptObjectError(t))
		}},
		{"GetListWithoutErrorAggregation", func(t *testing.T, b *backend) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, false)
			f := b.setup(t, withoutPrefix())
			storagetesting.RunTestGetListWithoutErrorAggregation(f.ctx, t, f.transformerOverride(f.store), corruptObjectError(t))
		}},
		{"GuaranteedUpdate", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestGuaranteedUpdate(f.ctx, t, f.prefixTransformerStore(), f.checkStorageInvariants())
		}},
		{"GuaranteedUpdateWithTTL", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestGuaranteedUpdateWithTTL(f.ctx, t, f.store)
		}},
		{"GuaranteedUpdateChecksStoredData", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestGuaranteedUpdateChecksStoredData(f.ctx, t, f.prefixTransformerStore())
		}},
		{"GuaranteedUpdateWithConflict", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestGuaranteedUpdateWithConflict(f.ctx, t, f.store)
		}},
		{"GuaranteedUpdateWithSuggestionAndConflict", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestGuaranteedUpdateWithSuggestionAndConflict(f.ctx, t, f.store)
		}},
		{"TransformationFailure", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestTransformationFailure(f.ctx, t, f.prefixTransformerStore())
		}},
	}
	for _, rangeStream := range []bool{false, true} {
		cs = append(cs, tcase{fmt.Sprintf("List/rangeStream=%v", rangeStream), func(t *testing.T, b *backend) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.EtcdRangeStream, rangeStream)
			resetFeatureSupportCheckerDuringTest(t)
			f := b.setup(t)
			kvRecorder := f.client.KV.(*storagetesting.KVRecorder)
			storagetesting.RunTestList(f.ctx, t, f.store, f.compaction(), false, f.client.Kubernetes.(*storagetesting.KubernetesRecorder))
			streamReads := kvRecorder.GetStreamReadsAndReset()
			if rangeStream && streamReads == 0 {
				t.Error("expected lists to be served by RangeStream")
			}
			if !rangeStream && streamReads > 0 {
				t.Errorf("expected no RangeStream requests with the feature disabled, got %d", streamReads)
			}
		}})
	}
	for _, rangeStream := range []bool{false, true} {
		cs = append(cs, tcase{fmt.Sprintf("ConsistentList/rangeStream=%v", rangeStream), func(t *testing.T, b *backend) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.EtcdRangeStream, rangeStream)
			resetFeatureSupportCheckerDuringTest(t)
			f := b.setup(t)
			storagetesting.RunTestConsistentList(f.ctx, t, f.store, f.increaseRV(), false, true, false)
		}})
	}
	cs = append(cs, []tcase{
		{"CompactRevision", func(t *testing.T, b *backend) {
			// The store observes compactions by others through a watch on the compact
			// key, which ListFromCacheSnapshot turns on.
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ListFromCacheSnapshot, true)
			f := b.setup(t)
			storagetesting.RunTestCompactRevision(f.ctx, t, f.store, f.increaseRV(), f.compaction())
		}},
		{"ListContinuation", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestListContinuation(f.ctx, t, f.store, f.checkStorageCallsInvariants())
		}},
		{"ListPaginationRareObject", func(t *testing.T, b *backend) {
			// ListFromCacheSnapshot adds a Get of the compact key that the call count
			// does not expect.
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ListFromCacheSnapshot, false)
			f := b.setup(t)
			storagetesting.RunTestListPaginationRareObject(f.ctx, t, f.store, f.checkStorageCallsInvariants())
		}},
		{"ListContinuationWithFilter", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestListContinuationWithFilter(f.ctx, t, f.store, f.checkStorageCallsInvariants())
		}},
		{"NamespaceScopedList", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestNamespaceScopedList(f.ctx, t, f.store)
		}},
		{"ListInconsistentContinuation", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestListInconsistentContinuation(f.ctx, t, f.store, f.compaction())
		}},
		{"ListResourceVersionMatch", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestListResourceVersionMatch(f.ctx, t, f.prefixTransformerStore())
		}},
	}...)
	cs = append(cs, []tcase{
		{"GetListStreamMultiChunk", func(t *testing.T, b *backend) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.EtcdRangeStream, true)
			resetFeatureSupportCheckerDuringTest(t)
			f := b.setup(t)
			runGetListStreamMultiChunk(t, f)
		}},
		{"GetCurrentResourceVersion", func(t *testing.T, b *backend) {
			f := b.setup(t)
			runGetCurrentResourceVersion(t, f)
		}},
	}...)
	for _, sizeBased := range []bool{true, false} {
		cs = append(cs, tcase{fmt.Sprintf("Stats/SizeBasedListCostEstimate=%v", sizeBased), func(t *testing.T, b *backend) {
			f := b.setup(t)
			if sizeBased {
				if err := f.store.EnableResourceSizeEstimation(f.getKeys); err != nil {
					t.Fatal(err)
				}
			}
			storagetesting.RunTestStats(f.ctx, t, f.store, f.codec, f.transformer, sizeBased)
		}})
	}
	return append(cs, watchCases()...)
}

// watchCases mirrors watcher_test.go's TestWatch.
func watchCases() []tcase {
	cs := []tcase{
		{"Watch", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestWatch(f.ctx, t, f.store)
		}},
		{"ClusterScopedWatch", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestClusterScopedWatch(f.ctx, t, f.store)
		}},
		{"NamespaceScopedWatch", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestNamespaceScopedWatch(f.ctx, t, f.store)
		}},
		{"DeleteTriggerWatch", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestDeleteTriggerWatch(f.ctx, t, f.store)
		}},
		{"WatchFromZero", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestWatchFromZero(f.ctx, t, f.store, f.compaction())
		}},
		{"WatchFromNonZero", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestWatchFromNonZero(f.ctx, t, f.store)
		}},
		{"DelayedWatchDelivery", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestDelayedWatchDelivery(f.ctx, t, f.store)
		}},
		{"WatchError", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestWatchError(f.ctx, t, f.prefixTransformerStore())
		}},
		{"WatchContextCancel", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestWatchContextCancel(f.ctx, t, f.store)
		}},
		{"WatcherTimeout", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestWatcherTimeout(f.ctx, t, f.store)
		}},
		{"WatchDeleteEventObjectHaveLatestRV", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestWatchDeleteEventObjectHaveLatestRV(f.ctx, t, f.store)
		}},
		{"WatchInitializationSignal", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestWatchInitializationSignal(f.ctx, t, f.store)
		}},
		{"ProgressNotify", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunOptionalTestProgressNotify(f.ctx, t, f.store, f.increaseRV())
		}},
		{"WatchWithUnsafeDelete", func(t *testing.T, b *backend) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
			f := b.setup(t)
			storagetesting.RunTestWatchWithUnsafeDelete(f.ctx, t, f.transformerOverride(f.store), corruptObjectError(t))
		}},
		{"WatchDispatchBookmarkEvents", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunTestWatchDispatchBookmarkEvents(f.ctx, t, f.store, false)
		}},
		{"SendInitialEventsBackwardCompatibility", func(t *testing.T, b *backend) {
			f := b.setup(t)
			storagetesting.RunSendInitialEventsBackwardCompatibility(f.ctx, t, f.store)
		}},
	}
	for _, rangeStream := range []bool{false, true} {
		rs := fmt.Sprintf("RangeStream=%v/", rangeStream)
		gate := func(t *testing.T) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.EtcdRangeStream, rangeStream)
		}
		cs = append(cs, []tcase{
			{rs + "WatchSemantics", func(t *testing.T, b *backend) {
				gate(t)
				f := b.setup(t)
				storagetesting.RunWatchSemantics(f.ctx, t, f.store)
			}},
			{rs + "WatchSemanticsWithConcurrentDecode", func(t *testing.T, b *backend) {
				gate(t)
				featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ConcurrentWatchObjectDecode, true)
				f := b.setup(t)
				storagetesting.RunWatchSemantics(f.ctx, t, f.store)
			}},
			{rs + "WatchSemanticInitialEventsExtended", func(t *testing.T, b *backend) {
				gate(t)
				f := b.setup(t)
				storagetesting.RunWatchSemanticInitialEventsExtended(f.ctx, t, f.store)
			}},
			{rs + "WatchListMatchSingle", func(t *testing.T, b *backend) {
				gate(t)
				f := b.setup(t)
				storagetesting.RunWatchListMatchSingle(f.ctx, t, f.store)
			}},
		}...)
	}
	return append(cs, tcase{"WatchErrorEventIsBlockingFurtherEvent", func(t *testing.T, b *backend) {
		f := b.setup(t)
		storagetesting.RunWatchErrorIsBlockingFurtherEvents(f.ctx, t, f.prefixTransformerStore())
	}})
}

// backend is one running server that the cases share.
type backend struct {
	tg        *target
	endpoints []string     // the client URLs of the server (one) or the split topology's gateways
	stores    atomic.Int64 // numbers the stores' key prefixes
}

// fresh starts a server of b's target for the case t alone, stopped when it ends.
func (b *backend) fresh(t *testing.T) *backend {
	t.Helper()
	return &backend{tg: b.tg, endpoints: b.tg.start(t, b.tg.im)}
}

// etcdStore is what the cases use of the store etcd3.New returns (an unexported type).
type etcdStore interface {
	storage.Interface
	EnableResourceSizeEstimation(storage.KeysFunc) error
}

// fixture is one case's store, client and transformer, as k8s's testSetup makes them.
type fixture struct {
	ctx           context.Context
	store         etcdStore
	client        *kubernetes.Client
	codec         runtime.Codec
	prefix        string // the store's key prefix, e.g. /k8s-3
	groupResource schema.GroupResource
	resPrefix     string
	// transformer is what the store was given: it forwards to the current transformer, which
	// UpdatePrefixTransformer and UpdateTransformer swap for the length of a test step
	// (k8s's tests assign the store's unexported field instead).
	transformer *swapTransformer
	// base is the default transformer, nil when the case brought its own.
	base *storagetesting.PrefixTransformer
}

type setupOptions struct {
	codec       runtime.Codec
	transformer value.Transformer
	noPrefix    bool
}

type setupOption func(*setupOptions)

func withCodec(c runtime.Codec) setupOption { return func(o *setupOptions) { o.codec = c } }

func withTransformer(tr value.Transformer) setupOption {
	return func(o *setupOptions) { o.transformer = tr }
}

// withoutPrefix makes the store use k8s's default key prefix (none), for the cases that compare
// keys in error messages; it deletes the case's objects afterwards.
func withoutPrefix() setupOption { return func(o *setupOptions) { o.noPrefix = true } }

func newTestTransformer() *storagetesting.PrefixTransformer {
	return storagetesting.NewPrefixTransformer([]byte(testValuePrefix), false)
}

// setup is k8s's testSetup against b's server: a kubernetes client with k8s's call recorders, a
// compactor that never compacts by itself, and an etcd3 store of example Pods under a key prefix
// of its own.
func (b *backend) setup(t *testing.T, opts ...setupOption) *fixture {
	t.Helper()
	o := setupOptions{codec: apitesting.TestCodec(codecs, examplev1.SchemeGroupVersion)}
	for _, opt := range opts {
		opt(&o)
	}
	// k8s's tests use context.Background(); a deadline makes a hung case fail on its own
	// instead of running into go test's timeout.
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	t.Cleanup(cancel)
	f := &fixture{
		ctx:           ctx,
		codec:         o.codec,
		prefix:        fmt.Sprintf("/k8s-%d", b.stores.Add(1)),
		groupResource: schema.GroupResource{Resource: "pods"},
		resPrefix:     "/pods/",
	}
	if o.noPrefix {
		f.prefix = ""
	}
	if o.transformer == nil {
		f.base = newTestTransformer()
		o.transformer = f.base
	}
	f.transformer = newSwapTransformer(o.transformer)

	client, err := kubernetes.New(clientv3.Config{
		Endpoints:   b.endpoints,
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	if o.noPrefix {
		// Registered after Close, so run before it.
		t.Cleanup(func() {
			if _, err := client.KV.Delete(context.Background(), f.etcdKey(f.resPrefix), clientv3.WithPrefix()); err != nil {
				t.Errorf("delete the case's objects: %v", err)
			}
		})
	}
	recorder := storagetesting.NewKubernetesRecorder(client.Kubernetes)
	client.KV = storagetesting.NewKVRecorder(client.KV, recorder)
	client.Kubernetes = recorder
	f.client = client

	versioner := storage.APIObjectVersioner{}
	compactor := etcd3.NewCompactor(client.Client, 0, clock.RealClock{}, nil)
	t.Cleanup(compactor.Stop)
	leaseConfig := etcd3.NewDefaultLeaseManagerConfig()
	// k8s's tests reuse a lease for 1 s instead of 60 s: its tests wait at most 30 s.
	leaseConfig.ReuseDurationSeconds = 1
	s, err := etcd3.New(client, compactor, o.codec, func() runtime.Object { return &example.Pod{} },
		func() runtime.Object { return &example.PodList{} }, f.prefix, f.resPrefix, f.groupResource,
		f.transformer, leaseConfig, etcd3.NewDefaultDecoder(o.codec, versioner), versioner)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	f.store = s
	return f
}

// etcdKey is the key in etcd of the store's key (which starts with "/").
func (f *fixture) etcdKey(key string) string { return f.prefix + key }

// checkStorageInvariants is k8s's: the stored value is the transformer's prefix and the object
// without resource version or self link.
func (f *fixture) checkStorageInvariants() storagetesting.KeyValidation {
	return func(ctx context.Context, t *testing.T, key string) {
		resp, err := f.client.KV.Get(ctx, f.etcdKey(key))
		if err != nil {
			t.Fatalf("etcdClient.KV.Get failed: %v", err)
		}
		if len(resp.Kvs) == 0 {
			t.Fatalf("expecting non empty result on key: %s", key)
		}
		decoded, err := runtime.Decode(f.codec, resp.Kvs[0].Value[len(testValuePrefix):])
		if err != nil {
			t.Fatalf("expecting successful decode of object from %v\n%v", err, string(resp.Kvs[0].Value))
		}
		obj := decoded.(*example.Pod)
		if obj.ResourceVersion != "" {
			t.Errorf("stored object should have empty resource version")
		}
		if obj.SelfLink != "" {
			t.Errorf("stored output should have empty selfLink")
		}
	}
}

// checkStorageCallsInvariants is k8s's: a paged list reads each object once and asks etcd for
// pages that double in size.
func (f *fixture) checkStorageCallsInvariants() storagetesting.CallsValidation {
	recorder := f.client.KV.(*storagetesting.KVRecorder)
	return func(t *testing.T, pageSize, estimatedProcessedObjects uint64) {
		if reads := f.base.GetReadsAndReset(); reads != estimatedProcessedObjects {
			t.Errorf("unexpected reads: %d, expected: %d", reads, estimatedProcessedObjects)
		}
		estimatedGetCalls := uint64(1)
		if pageSize != 0 {
			currLimit := pageSize
			for sum := uint64(1); sum < estimatedProcessedObjects; {
				currLimit = min(currLimit*2, maxLimit)
				sum += currLimit
				estimatedGetCalls++
			}
		}
		if reads := recorder.GetReadsAndReset() + recorder.GetStreamReadsAndReset(); reads != estimatedGetCalls {
			t.Fatalf("unexpected reads: %d, want: %d", reads, estimatedGetCalls)
		}
	}
}

// compaction is k8s's compactStorage: compact at the given resource version through the compact
// key, as kube-apiserver's compactor does, and with ListFromCacheSnapshot wait until the store has
// seen it.
func (f *fixture) compaction() storagetesting.Compaction {
	return func(ctx context.Context, t *testing.T, resourceVersion string) {
		rv, err := storage.APIObjectVersioner{}.ParseResourceVersion(resourceVersion)
		if err != nil {
			t.Fatal(err)
		}
		// k8s's compactStorage calls Compact with version 0 (then once more on an error): on
		// its fresh etcd the compact key does not exist yet. Here an earlier case may have
		// compacted, so Compact's compare-and-swap on the key's version fails (without an
		// error) and returns the version to retry with.
		var version int64
		for attempt := 0; ; attempt++ {
			var compacted int64
			version, _, compacted, err = etcd3.Compact(ctx, f.client.Client, version, int64(rv))
			if err != nil && attempt > 0 {
				t.Fatal(err)
			}
			if err == nil && compacted == int64(rv) {
				break
			}
			if attempt == 3 {
				t.Fatalf("compaction at %d: the compact key kept changing (last compacted %d)", rv, compacted)
			}
		}
		if utilfeature.DefaultFeatureGate.Enabled(features.ListFromCacheSnapshot) {
			deadline := time.Now().Add(30 * time.Second)
			for f.store.CompactRevision() != int64(rv) {
				if time.Now().After(deadline) {
					t.Fatalf("the store did not see the compaction at %d: CompactRevision()=%d", rv, f.store.CompactRevision())
				}
				time.Sleep(20 * time.Millisecond) // poll: the store learns it from a watch
			}
		}
	}
}

// increaseRV is k8s's increaseRVFunc: a write outside every store's prefix.
func (f *fixture) increaseRV() storagetesting.IncreaseRVFunc {
	return func(ctx context.Context, t *testing.T) int64 {
		resp, err := f.client.KV.Put(ctx, "increaseRV", "ok")
		if err != nil {
			t.Fatalf("Could not update increaseRV: %v", err)
		}
		return resp.Header.Revision
	}
}

// getKeys is the store's getKeys (unexported): the etcd keys of the resource.
func (f *fixture) getKeys(ctx context.Context) ([]string, error) {
	resp, err := f.client.KV.Get(ctx, f.etcdKey(f.resPrefix), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys, nil
}

// prefixTransformerStore is k8s's storeWithPrefixTransformer.
func (f *fixture) prefixTransformerStore() storagetesting.InterfaceWithPrefixTransformer {
	return &prefixTransformerStore{Interface: f.store, f: f}
}

type prefixTransformerStore struct {
	storage.Interface
	f *fixture
}

func (s *prefixTransformerStore) UpdatePrefixTransformer(modifier storagetesting.PrefixTransformerModifier) func() {
	transformer := *s.f.base
	s.f.transformer.set(modifier(&transformer))
	return func() { s.f.transformer.set(s.f.base) }
}

// transformerOverride is k8s's storeWithTransformerOverride around si, which must be (or wrap)
// f's store.
func (f *fixture) transformerOverride(si storage.Interface) storagetesting.InterfaceWithTransformerOverride {
	return &transformerOverrideStore{Interface: si, f: f}
}

type transformerOverrideStore struct {
	storage.Interface
	f *fixture
}

func (s *transformerOverrideStore) UpdateTransformer(modifier storagetesting.TransformerModifier) func() {
	orig := s.f.transformer.get()
	s.f.transformer.set(modifier(orig))
	return func() { s.f.transformer.set(orig) }
}

// swapTransformer forwards to a transformer that can be replaced while the store runs.
type swapTransformer struct {
	cur atomic.Pointer[value.Transformer]
}

func newSwapTransformer(tr value.Transformer) *swapTransformer {
	s := &swapTransformer{}
	s.set(tr)
	return s
}

func (s *swapTransformer) get() value.Transformer   { return *s.cur.Load() }
func (s *swapTransformer) set(tr value.Transformer) { s.cur.Store(&tr) }

func (s *swapTransformer) TransformFromStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, bool, error) {
	return s.get().TransformFromStorage(ctx, data, dataCtx)
}

func (s *swapTransformer) TransformToStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, error) {
	return s.get().TransformToStorage(ctx, data, dataCtx)
}

// failingTransformer is k8s's testTransformer: it fails every read while set failing.
type failingTransformer struct {
	value.Transformer
	fail atomic.Bool
}

func (tt *failingTransformer) setFailing(c bool) { tt.fail.Store(c) }

func (tt *failingTransformer) TransformFromStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, bool, error) {
	if tt.fail.Load() {
		return nil, false, errors.New("synthetic error")
	}
	return tt.Transformer.TransformFromStorage(ctx, data, dataCtx)
}

// failingCodec is k8s's testCodec: it fails every decode while set failing.
type failingCodec struct {
	runtime.Codec
	fail atomic.Bool
}

func (tc *failingCodec) setFailing(c bool) { tc.fail.Store(c) }

func (tc *failingCodec) Decode(data []byte, defaults *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	if tc.fail.Load() {
		return nil, nil, errors.New("synthetic error")
	}
	return tc.Codec.Decode(data, defaults, into)
}

// corruptObjectError is the error k8s's tests inject, &corruptObjectError{err: "bits flipped",
// errType: untransformable} (an unexported type), made the only way an outside package can: by
// etcd3's corrupt-object transformer wrapping a transformer that fails so.
func corruptObjectError(t *testing.T) error {
	t.Helper()
	tr := etcd3.WithCorruptObjErrorHandlingTransformer(errTransformer{errors.New("bits flipped")})
	_, _, err := tr.TransformFromStorage(context.Background(), nil, value.DefaultContext(""))
	if err == nil {
		t.Fatal("the corrupt-object transformer returned no error")
	}
	return err
}

type errTransformer struct{ err error }

func (e errTransformer) TransformFromStorage(context.Context, []byte, value.Context) ([]byte, bool, error) {
	return nil, false, e.err
}

func (e errTransformer) TransformToStorage(context.Context, []byte, value.Context) ([]byte, error) {
	return nil, e.err
}

// resetFeatureSupportCheckerDuringTest is k8s's: a fresh checker, so that what the previous
// store learnt about the server (RangeStream support) is asked again.
func resetFeatureSupportCheckerDuringTest(t *testing.T) {
	t.Helper()
	orig := etcdfeature.DefaultFeatureSupportChecker
	etcdfeature.DefaultFeatureSupportChecker = etcdfeature.NewDefaultFeatureSupportChecker()
	t.Cleanup(func() { etcdfeature.DefaultFeatureSupportChecker = orig })
}
