// bhsd — a persistent std::thread pool for data-parallel loops.
// Plain C++17, no Node: the Node-API layer owns one per environment, a C++ test can make its own.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>
// Steering the workers' wake-up (ThreadPool::steer_sleepers): Linux's affinity calls (not bionic's,
// which lacks pthread_setaffinity_np).
#if defined(__linux__) && !defined(__ANDROID__)
#define BHSD_POOL_STEER 1
#include <pthread.h>
#include <sched.h>
#endif

namespace bhsd {

// Cancellation of long computations: a flag the caller's thread runs under (current_cancel) that
// parallel_for checks before each chunk, on every thread taking part. Once it is set, the chunks
// not yet started are skipped and the loop throws Cancelled: a convolution stops within one chunk
// (a fraction of a layer), its output left partly written (the caller discards it).
struct CancelFlag {
  std::atomic<int> set{0};
};
struct Cancelled : std::runtime_error {
  Cancelled() : std::runtime_error("bhsd: cancelled") {}
};
// The flag of the computation this thread is running (null: not cancellable).
inline const CancelFlag*& current_cancel() {
  static thread_local const CancelFlag* flag = nullptr;
  return flag;
}
inline bool cancel_requested(const CancelFlag* f) { return f && f->set.load(std::memory_order_relaxed) != 0; }
// Throws Cancelled when this thread's computation was cancelled: for long serial loops.
inline void check_cancel() {
  if (cancel_requested(current_cancel())) throw Cancelled();
}
// Sets current_cancel for a scope (a worker running a job, a call running a computation).
class CancelScope {
 public:
  explicit CancelScope(const CancelFlag* f) : saved_(current_cancel()) { current_cancel() = f; }
  ~CancelScope() { current_cancel() = saved_; }
  CancelScope(const CancelScope&) = delete;
  CancelScope& operator=(const CancelScope&) = delete;

 private:
  const CancelFlag* saved_;
};

// The arithmetic a convolution may use (the Node layer's setCpuPrecision / loadModel's precision):
// fp32 throughout, or bf16 products with fp32 sums where the processor has AVX512_BF16 (the
// Winograd convolutions' transformed-domain products; everything else stays fp32). Per thread: the
// call that runs a computation sets it for its own thread (PrecisionScope), so two models of
// different precision can run at once.
enum class Precision { fp32 = 0, bf16 = 1 };
inline Precision& call_precision() {
  static thread_local Precision p = Precision::fp32;
  return p;
}
class PrecisionScope {
 public:
  explicit PrecisionScope(Precision p) : saved_(call_precision()) { call_precision() = p; }
  ~PrecisionScope() { call_precision() = saved_; }
  PrecisionScope(const PrecisionScope&) = delete;
  PrecisionScope& operator=(const PrecisionScope&) = delete;

 private:
  Precision saved_;
};

// While set on a thread, its parallel loops use the pool only if no other loop holds it, and
// otherwise run serially on that thread instead of waiting (the Node layer's calls run inline on
// the JavaScript thread, which must not wait behind another call's long loop).
inline bool& pool_no_wait() {
  static thread_local bool flag = false;
  return flag;
}
class PoolNoWaitScope {
 public:
  PoolNoWaitScope() : saved_(pool_no_wait()) { pool_no_wait() = true; }
  ~PoolNoWaitScope() { pool_no_wait() = saved_; }
  PoolNoWaitScope(const PoolNoWaitScope&) = delete;
  PoolNoWaitScope& operator=(const PoolNoWaitScope&) = delete;

 private:
  bool saved_;
};

// Runs `fn(lo, hi)` over [0, n) split into chunks, on the calling thread plus the pool's workers.
// One loop runs at a time (callers from several threads queue on a mutex); a loop started from
// inside a worker runs serially on that worker, so nesting cannot deadlock. The first exception
// thrown by any chunk is rethrown on the calling thread after every chunk has finished.
class ThreadPool {
 public:
  explicit ThreadPool(unsigned threads) {
    if (threads < 1) threads = 1;
    slot_store_.resize(threads);
    workers_.reserve(threads - 1);
    sleeper_.resize(threads - 1);
#ifdef BHSD_POOL_STEER
    // steering (steer_sleepers) only where each thread can have a processor of its own
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    steer_ = threads > 1 && !std::getenv("BHSD_POOL_NO_STEER") && sched_getaffinity(0, sizeof allowed, &allowed) == 0 &&
             unsigned(CPU_COUNT(&allowed)) >= threads;
#endif
    for (unsigned i = 0; i + 1 < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i + 1); });
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() { shutdown(); }

  // Threads that take part in a loop (the workers and the caller).
  unsigned size() const { return static_cast<unsigned>(workers_.size()) + 1; }

  // For the tests: whether this pool steers its sleeping workers' wake-up (steer_sleepers), the
  // workers asleep now, those of them already steered (woken for a loop that was over before they
  // ran — on a loaded machine the caller may take every chunk — they wait on for the next, still
  // confined, and the next loop leaves them so), and how many times a worker has been steered.
  struct SteeringStats {
    bool on;
    int asleep, steered;
    std::uint64_t steers;
  };
  SteeringStats steering_stats() {
    std::lock_guard<std::mutex> lk(mutex_);
    int steered = 0;
    for (const Sleeper& w : sleeper_) steered += w.asleep && w.steered;
#ifdef BHSD_POOL_STEER
    return {steer_, sleepers_, steered, steers_};
#else
    return {false, sleepers_, steered, steers_};
#endif
  }

  // Stops and joins the workers; later loops run on the calling thread alone.
  void shutdown() {
    {
      std::lock_guard<std::mutex> run(run_mutex_);  // let a loop in flight finish
      std::lock_guard<std::mutex> lk(mutex_);
      if (stopping_) return;
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_)
      if (t.joinable()) t.join();
  }

  // Splits [0, n) into about `chunks_per_thread` chunks per thread, each at least `grain` long.
  void parallel_for(std::size_t n, const std::function<void(std::size_t, std::size_t)>& fn, std::size_t grain = 1,
                    unsigned chunks_per_thread = 4) {
    if (n == 0) return;
    if (grain < 1) grain = 1;
    const unsigned threads = size();
    const std::size_t want = std::size_t(threads) * chunks_per_thread;
    const std::size_t chunk = std::max<std::size_t>(grain, (n + want - 1) / want);
    const std::size_t chunks = (n + chunk - 1) / chunk;
    const CancelFlag* cancel = current_cancel();
    check_cancel();
    auto serially = [&] {
      if (!cancel) {
        fn(0, n);
        return;
      }
      for (std::size_t lo = 0; lo < n; lo += chunk) {  // still checking between chunks
        check_cancel();
        fn(lo, std::min(n, lo + chunk));
      }
    };
    if (chunks <= 1 || threads == 1 || in_worker()) return serially();
    // Shared with the workers: one that wakes after the last chunk is taken still holds the job,
    // finds nothing to do and lets go, while the caller has long returned (it never waits for a
    // descheduled thread that has no chunk: on a loaded machine that wait cost a scheduler quantum
    // per loop).
    std::unique_lock<std::mutex> run(run_mutex_, std::defer_lock);
    if (!pool_no_wait())
      run.lock();
    else if (!run.try_lock())
      return serially();  // another loop holds the pool: this one does not wait for it
    auto shared = std::make_shared<Job>(&fn, n, chunk, chunks, cancel);
    Job& job = *shared;
    bool asleep = false;
    {
      std::unique_lock<std::mutex> lk(mutex_, std::defer_lock);
      lock_soon(lk);
      if (stopping_) {
        run.unlock();
        fn(0, n);
        return;
      }
      asleep = sleepers_ > 0;
      if (asleep) steer_sleepers();  // (under mutex_: no worker leaves its wait meanwhile)
      job_ = shared;
      ++generation_;
      published_.store(generation_, std::memory_order_release);
    }
    // only where a worker sleeps (it counted itself under mutex_ before it waited): glibc's
    // broadcast made a futex call on most loops even with every worker spinning
    if (asleep) wake_.notify_all();
    in_worker() = true;  // the caller works too; a nested loop inside its chunks runs serially
    work(job, 0);
    in_worker() = false;
    // the last chunks are most often a worker's a few µs from done: watched for up to kSpin first,
    // since sleeping on finished_ costs a futex wait here and a wake there (VM exits both)
    watch([&] { return job.finished.load(std::memory_order_acquire) == job.chunks; });
    std::unique_lock<std::mutex> lk(mutex_, std::defer_lock);
    lock_soon(lk);
    if (job.finished.load() != job.chunks) {
      // (seq_cst, as the workers' count and their load of it: either this thread sees the last
      // chunk counted, or that chunk's worker sees it waits and notifies after taking mutex_)
      job.caller_waits.store(true);
      finished_.wait(lk, [&] { return job.finished.load() == job.chunks; });
    }
    job_ = nullptr;  // no worker picks it up from here on; late ones find no chunk left
    const std::exception_ptr error = job.error;
    lk.unlock();
    if (error) std::rethrow_exception(error);
  }

  // What a loop's chunks keep from loop to loop per slot of this pool — the caller's (0: whichever
  // thread calls parallel_for, one at a time) and each worker's (1 …) — where thread_local keeps it
  // per OS thread: a pool's callers are libuv's threads in turn, and each had faulted in its own
  // copy of a layer's scratch (a Winograd task's V and M: up to 56 MB each at 256 channels), once
  // per size, in the first windows of a model and in every bench's first runs. The current chunk's
  // slot's T (made on first use; one per T and Tag), or null outside a pooled loop's chunks (a loop
  // run serially: its caller keeps its own). A nested loop runs serially inside its chunk, in the
  // same slot, as it ran on the same thread before.
  template <class T, class Tag>
  static T* slot_local() {
    const SlotContext& c = slot_context();
    if (!c.pool) return nullptr;
    auto& v = c.pool->slot_store_[c.slot];
    const std::size_t id = slot_tag<T, Tag>();
    if (v.size() <= id) v.resize(id + 1);
    if (!v[id]) v[id] = std::make_shared<T>();
    return static_cast<T*>(v[id].get());
  }

 private:
  struct SlotContext {
    ThreadPool* pool = nullptr;
    unsigned slot = 0;
  };
  static SlotContext& slot_context() {
    static thread_local SlotContext c;
    return c;
  }
  class SlotScope {
   public:
    SlotScope(ThreadPool* pool, unsigned slot) : saved_(slot_context()) { slot_context() = {pool, slot}; }
    ~SlotScope() { slot_context() = saved_; }
    SlotScope(const SlotScope&) = delete;
    SlotScope& operator=(const SlotScope&) = delete;

   private:
    SlotContext saved_;
  };
  static std::atomic<std::size_t>& tag_count() {
    static std::atomic<std::size_t> n{0};
    return n;
  }
  template <class T, class Tag>
  static std::size_t slot_tag() {
    static const std::size_t id = tag_count().fetch_add(1);
    return id;
  }

  struct Job {
    const std::function<void(std::size_t, std::size_t)>* fn;
    std::size_t n, chunk, chunks;
    const CancelFlag* cancel;  // the caller's; workers run the job's chunks under it
    std::atomic<std::size_t> next{0};
    std::atomic<std::size_t> finished{0};   // chunks done (no lock)
    std::atomic<bool> caller_waits{false};  // the caller sleeps on finished_
    std::exception_ptr error;               // guarded by mutex_
    Job(const std::function<void(std::size_t, std::size_t)>* f, std::size_t n_, std::size_t c, std::size_t cs,
        const CancelFlag* cf)
        : fn(f), n(n_), chunk(c), chunks(cs), cancel(cf) {}
  };

  static bool& in_worker() {
    static thread_local bool flag = false;
    return flag;
  }

  void work(Job& job, unsigned slot) {
    CancelScope scope(job.cancel);  // nested loops and check_cancel() in the chunks see it
    const SlotScope in_slot(this, slot);
    for (;;) {
      const std::size_t c = job.next.fetch_add(1, std::memory_order_relaxed);
      if (c >= job.chunks) return;
      const std::size_t lo = c * job.chunk, hi = std::min(job.n, lo + job.chunk);
      std::exception_ptr err;
      try {
        if (cancel_requested(job.cancel)) throw Cancelled();  // skipped: the loop is cancelled
        (*job.fn)(lo, hi);
      } catch (...) {
        err = std::current_exception();
      }
      if (err) {
        std::lock_guard<std::mutex> lk(mutex_);
        if (!job.error) job.error = err;
      }
      // counted without mutex_: a lock a chunk, taken by the caller and a worker at once, cost both
      // a futex call (a few µs each in these VMs) on most small loops
      if (job.finished.fetch_add(1) + 1 == job.chunks && job.caller_waits.load()) {
        { std::lock_guard<std::mutex> lk(mutex_); }  // (the caller is in its wait once this is had)
        finished_.notify_all();
      }
    }
  }

  // A worker that has finished a loop watches for the next one for up to kSpin before it sleeps:
  // waking a sleeping thread costs about 23 µs in these VMs, paid by every loop (a loop of two
  // 10 µs chunks took 33 µs, of two 70 µs chunks 93), and a network's small layers come one after
  // another with a few µs of JavaScript between them. Bounded, and the caller never waits for it.
  static constexpr std::chrono::microseconds kSpin{50};
  static void relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
  }

  // Takes mutex_, trying for a while before blocking: its holders keep it for a few instructions
  // (or a syscall: steering), and a thread that blocks on a held mutex costs itself a futex wait
  // and its holder a futex wake, each a VM exit here. A worker that saw a loop published went for
  // mutex_ while the caller still held it, nearly every time.
  // Tried for up to 80 µs (by the clock, as a pause takes 18 ns on one core and 40 on another):
  // the longest hold is a steering call, a syscall or two.
  static void lock_soon(std::unique_lock<std::mutex>& lk) {
    if (lk.try_lock()) return;
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(80);
    for (unsigned i = 1;; ++i) {
      relax();
      if (lk.try_lock()) return;
      if (i % 64 == 0 && std::chrono::steady_clock::now() > until) break;
    }
    lk.lock();
  }

  // Spins (pausing) until ready() or kSpin has passed.
  template <class Ready>
  static void watch(const Ready& ready) {
    if (ready()) return;
    const auto until = std::chrono::steady_clock::now() + kSpin;
    for (unsigned i = 1; !ready(); ++i) {
      relax();
      if (i % 64 == 0 && std::chrono::steady_clock::now() > until) return;
    }
  }

  void worker_loop(unsigned slot) {
    in_worker() = true;
    std::uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> job;
      watch([&] { return published_.load(std::memory_order_acquire) != seen; });
      Sleeper& me = sleeper_[slot - 1];
      bool restore = false;
      {
        std::unique_lock<std::mutex> lk(mutex_, std::defer_lock);
        lock_soon(lk);
        const auto ready = [&] { return stopping_ || (job_ != nullptr && generation_ != seen); };
        if (!stopping_ && job_ == nullptr && generation_ != seen) {
          // A loop that was over before this worker came (the caller took every chunk): it watches
          // for the next one again. It had gone to sleep here, so that once late it was late for
          // every loop after — each woken by a futex call, and a loop of two 1 µs chunks took 6 µs
          // with calls 10 µs apart; 0.5–1.3 µs now.
          seen = generation_;
          continue;
        }
        if (!ready()) {  // asleep until the next loop: the caller may steer where this thread wakes
          remember_mask(me);
          me.asleep = true, ++sleepers_;
          wake_.wait(lk, ready);
          me.asleep = false, --sleepers_;
          restore = me.steered, me.steered = false;
        }
        if (stopping_) return;
        seen = generation_;
        job = job_;
      }
      if (restore) restore_mask(me);
      work(*job, slot);
    }
  }

  // Where a sleeping worker wakes. A worker idle for more than kSpin sleeps, and a virtual processor
  // left idle is descheduled by the host; Linux then treats it as busy (vcpu_is_preempted) and wakes
  // the worker on the caller's own processor, where the two take turns while the other processor
  // stays idle — in these 2-vCPU VMs every loop of a call made after 20 ms without one ran on one
  // processor: 320→320 at 4×16×16 (stride 1×2×2) took 7.6 ms instead of 3.8, and a loop of two 1 ms
  // chunks ran them one after the other. So the caller, finding workers asleep, confines each of
  // them to the processors of its own mask other than the caller's (one call a sleeping worker),
  // and a worker so confined, once awake, takes its own mask back: it is confined only for its
  // wake-up, and where the caller's processor later comes free (the caller waiting on a loaded
  // machine) it may still move there. Steered under mutex_, where no worker leaves its wait and
  // shutdown has not begun (stopping_ is checked first: a worker that has exited has no thread to
  // set). Linux only, and only where every thread can have a processor of its own
  // (BHSD_POOL_NO_STEER turns it off, for the bench); a failed call leaves that worker as it was.
  struct Sleeper {
    bool asleep = false;   // waiting on wake_ (guarded by mutex_, as all of these)
    bool steered = false;  // confined by a caller since it went to sleep
#ifdef BHSD_POOL_STEER
    bool known = false;  // mask read
    cpu_set_t mask;      // its own mask as it went to sleep
#endif
  };
#ifdef BHSD_POOL_STEER
  void remember_mask(Sleeper& me) {
    if (steer_) me.known = pthread_getaffinity_np(pthread_self(), sizeof me.mask, &me.mask) == 0;
  }
  void restore_mask(Sleeper& me) { pthread_setaffinity_np(pthread_self(), sizeof me.mask, &me.mask); }
  void steer_sleepers() {
    if (!steer_) return;
    const int cpu = sched_getcpu();
    if (cpu < 0 || cpu >= CPU_SETSIZE) return;
    for (std::size_t i = 0; i < workers_.size(); ++i) {
      Sleeper& w = sleeper_[i];
      if (!w.asleep || w.steered || !w.known || !CPU_ISSET(cpu, &w.mask)) continue;
      cpu_set_t others = w.mask;
      CPU_CLR(cpu, &others);
      if (CPU_COUNT(&others) > 0 && pthread_setaffinity_np(workers_[i].native_handle(), sizeof others, &others) == 0)
        w.steered = true, ++steers_;
    }
  }
  bool steer_ = false;
#else
  void remember_mask(Sleeper&) {}
  void restore_mask(Sleeper&) {}
  void steer_sleepers() {}
#endif
  std::vector<Sleeper> sleeper_;  // per worker
  int sleepers_ = 0;              // workers asleep (mutex_)
  std::uint64_t steers_ = 0;      // workers steered so far (mutex_; steering_stats)

  std::vector<std::thread> workers_;
  // slot_local's objects: [slot][tag], each slot's touched only by the thread in it (the caller's
  // slot by whichever holds run_mutex_)
  std::vector<std::vector<std::shared_ptr<void>>> slot_store_;
  std::mutex run_mutex_;  // one loop at a time
  std::mutex mutex_;
  std::condition_variable wake_, finished_;
  std::shared_ptr<Job> job_;  // the loop in flight, guarded by mutex_
  std::uint64_t generation_ = 0;
  std::atomic<std::uint64_t> published_{0};  // generation_, for the workers' spin (no lock)
  bool stopping_ = false;
};

// Threads to use by default: BHSD_THREADS when set to a positive number, else the hardware's.
inline unsigned default_thread_count() {
  if (const char* s = std::getenv("BHSD_THREADS")) {
    char* end = nullptr;
    long v = std::strtol(s, &end, 10);
    if (end != s && v > 0 && v <= 1024) return static_cast<unsigned>(v);
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? hc : 1;
}

}  // namespace bhsd
