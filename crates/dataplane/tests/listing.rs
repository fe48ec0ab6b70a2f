//! Listing a million connections (`sluice ctl connections`) is answered by the worker between bursts, a bounded
//! stretch of its table per poll: the walk lists every connection while the worker keeps forwarding every frame
//! it is offered, and no poll is held by the listing for long.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use balancer::conntrack::EdgeHooks;
use balancer::service::ForwardingMode;
use crossbeam::channel::bounded;
use dataplane::listing::{ConnFilter, ListingChannel, ListingQuery, WorkerAnswer, WorkerQuery};

#[test]
fn a_million_connections_are_listed_while_every_frame_is_forwarded() {
    listed_while_forwarding(1_000_000);
}

fn listed_while_forwarding(flows: u32) {
    let mut worker = dataplane::traffic::bench_worker(
        ForwardingMode::Dr,
        false,
        flows,
        60,
        false,
        32,
        EdgeHooks::default(),
    )
    .unwrap();
    let stats = worker.stats();
    // The clock stands still while the table fills: no connection may expire before the last is opened.
    let now = 1u64;
    while worker.state().conns.len() < flows as usize {
        worker.poll(now);
    }
    let (queries, worker_queries) = bounded(1);
    let (worker_answers, answers) = bounded(1);
    worker.answer_listings(ListingChannel {
        queries: worker_queries,
        answers: worker_answers,
    });
    let frames_before = stats.rx.load(Ordering::Relaxed);
    // The control thread's side, as `operator::connections` walks: one stretch per question.
    let walker = std::thread::spawn(move || {
        let (mut listed, mut start, mut questions) = (0usize, Some(0usize), 0u32);
        while let Some(from) = start {
            queries
                .send(WorkerQuery::Connections(ListingQuery {
                    filter: ConnFilter::All,
                    start: from,
                    rows: Vec::with_capacity(10_000),
                }))
                .unwrap();
            let Ok(WorkerAnswer::Connections(page)) = answers.recv_timeout(Duration::from_secs(10))
            else {
                panic!("no answer for the stretch from slot {from}");
            };
            listed += page.rows.len();
            start = page.next;
            questions += 1;
        }
        (listed, questions)
    });
    let mut longest = Duration::ZERO;
    let mut polls = 0u64;
    while !walker.is_finished() {
        let started = Instant::now();
        worker.poll(now);
        longest = longest.max(started.elapsed());
        polls += 1;
    }
    let (listed, questions) = walker.join().unwrap();
    assert_eq!(
        listed, flows as usize,
        "every live connection is listed once"
    );
    let forwarded = stats.rx.load(Ordering::Relaxed) - frames_before;
    // The worker kept polling its queues between the questions: frames kept coming in and every one went out.
    assert!(
        forwarded >= u64::from(questions),
        "{forwarded} frames in {questions} stretches"
    );
    worker.poll(now);
    assert_eq!(stats.total_drops(), 0);
    assert_eq!(
        stats.tx.load(Ordering::Relaxed),
        stats.rx.load(Ordering::Relaxed),
        "a frame was not forwarded"
    );
    println!(
        "{listed} connections in {questions} stretches over {polls} polls; longest poll {longest:?}"
    );
    // One stretch is a few thousand slots: tens of microseconds optimised; an unoptimised build on a shared CPU
    // gets a wide margin.
    let bound = if cfg!(debug_assertions) {
        Duration::from_millis(500)
    } else {
        Duration::from_millis(20)
    };
    assert!(longest < bound, "a poll took {longest:?}");
}
