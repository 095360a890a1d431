//! Deleting what a resource owns remotely: only instances the platform's own answer shows with the
//! resource's ownership tag are deleted.

use super::Note;
use crate::controller::error::Error;
use crate::controller::events::EventType;
use crate::platform::PlatformError;

/// One step of deleting what a resource owns remotely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteStep {
    /// `GET /instances?tags[]=<ownership tag>`.
    Search,
    /// `GET /instances/{id}` of the instance recorded in status, which the search did not find:
    /// does the platform's answer show the ownership tag?
    ReadRecorded(i64),
    /// `DELETE /instances/{id}`.
    Delete(i64),
    /// Nothing left.
    Done,
}

/// A deletion step's answer.
#[derive(Debug)]
pub enum DeleteAnswer {
    /// The ids the tag search answered (instances that carry the ownership tag).
    Found(Vec<i64>),
    /// The tags the platform shows on the recorded instance.
    Tags(Vec<String>),
    /// The instance was deleted (`true`), or was already gone (`false`: a 404 counts as done).
    Deleted(bool),
}

/// The state of a deletion: only instances the platform's own answer shows with this resource's
/// ownership tag are deleted.
#[derive(Debug, Clone, Default)]
pub struct Deletion {
    tag: String,
    reference: Option<String>,
    recorded: Option<i64>,
    found: Option<Vec<i64>>,
    recorded_checked: bool,
    done: Vec<i64>,
    /// Instances deleted.
    pub deleted: Vec<i64>,
    /// Events to publish.
    pub notes: Vec<Note>,
}

impl Deletion {
    /// A deletion of what carries `tag`, with `recorded` the id in status.
    pub fn new(tag: &str, recorded: Option<i64>) -> Self {
        Deletion { tag: tag.to_string(), recorded, ..Deletion::default() }
    }

    /// The recorded instance is also deleted when it shows the resource's reference tag instead
    /// of its ownership tag (adopted from a resource of the same namespace and name before, and
    /// not re-tagged yet). The search is by ownership tag alone: instances another resource of
    /// that name left are not this one's to delete.
    pub fn or_recorded_with(mut self, reference: Option<String>) -> Self {
        self.reference = reference;
        self
    }

    /// The next step.
    pub fn next_step(&self) -> DeleteStep {
        let Some(found) = &self.found else {
            return DeleteStep::Search;
        };
        if let Some(recorded) = self.recorded
            && !found.contains(&recorded)
            && !self.recorded_checked
        {
            return DeleteStep::ReadRecorded(recorded);
        }
        match found.iter().find(|id| !self.done.contains(id)) {
            Some(id) => DeleteStep::Delete(*id),
            None => DeleteStep::Done,
        }
    }

    /// Takes in a step's answer. A 404 of the recorded instance means it is gone already.
    pub fn after(
        &mut self,
        step: DeleteStep,
        answer: Result<DeleteAnswer, PlatformError>,
    ) -> Result<(), Error> {
        match (step, answer) {
            (DeleteStep::ReadRecorded(_), Err(PlatformError::NotFound { .. })) => {
                self.recorded_checked = true
            }
            (_, Err(err)) => return Err(err.into()),
            (DeleteStep::Search, Ok(DeleteAnswer::Found(mut ids))) => {
                ids.sort_unstable();
                ids.dedup();
                self.found = Some(ids);
            }
            (DeleteStep::ReadRecorded(id), Ok(DeleteAnswer::Tags(tags))) => {
                self.recorded_checked = true;
                if tags.iter().any(|t| *t == self.tag || Some(t) == self.reference.as_ref()) {
                    self.found.get_or_insert_with(Vec::new).push(id);
                } else {
                    let message = format!(
                        "remote instance {id} does not carry this resource's ownership tag; it is not deleted"
                    );
                    self.notes.push(Note {
                        type_: EventType::Warning,
                        reason: "RemoteNotOwned",
                        message,
                        action: false,
                    });
                }
            }
            (DeleteStep::Delete(id), Ok(DeleteAnswer::Deleted(was_there))) => {
                self.done.push(id);
                if was_there {
                    self.deleted.push(id);
                }
            }
            (step, answer) => {
                tracing::error!(?step, ?answer, "an answer that does not belong to the deletion step");
                return Err(Error::Internal("a platform answer did not match its deletion step"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- Deletion: Delete, remote already gone, not owned. ----

    fn delete_all(
        mut deletion: Deletion,
        mut answer: impl FnMut(DeleteStep) -> Result<DeleteAnswer, PlatformError>,
    ) -> (Deletion, Vec<DeleteStep>, Result<(), Error>) {
        let mut steps = Vec::new();
        for _ in 0..12 {
            let step = deletion.next_step();
            if step == DeleteStep::Done {
                return (deletion, steps, Ok(()));
            }
            steps.push(step);
            if let Err(err) = deletion.after(step, answer(step)) {
                return (deletion, steps, Err(err));
            }
        }
        panic!("no end: {steps:?}");
    }

    #[test]
    fn deletion_deletes_every_tagged_instance_and_the_recorded_one_if_it_shows_the_tag() {
        let tag = "k8s-uid-1";
        let (d, steps, end) = delete_all(Deletion::new(tag, Some(7)), |step| match step {
            DeleteStep::Search => Ok(DeleteAnswer::Found(vec![9, 8, 9])),
            DeleteStep::ReadRecorded(7) => Ok(DeleteAnswer::Tags(vec!["team-a".into(), tag.into()])),
            DeleteStep::Delete(_) => Ok(DeleteAnswer::Deleted(true)),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        let expected = [
            DeleteStep::Search,
            DeleteStep::ReadRecorded(7),
            DeleteStep::Delete(8),
            DeleteStep::Delete(9),
            DeleteStep::Delete(7),
        ];
        assert_eq!(steps, expected);
        assert_eq!(d.deleted, [8, 9, 7]);
    }

    #[test]
    fn deletion_of_a_remote_already_gone_is_done() {
        let (d, steps, end) = delete_all(Deletion::new("k8s-uid-1", Some(7)), |step| match step {
            DeleteStep::Search => Ok(DeleteAnswer::Found(vec![])),
            DeleteStep::ReadRecorded(7) => Err(PlatformError::NotFound { message: "gone".into() }),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert_eq!(steps, [DeleteStep::Search, DeleteStep::ReadRecorded(7)]);
        assert!(d.deleted.is_empty());
        // A 404 of the DELETE itself counts as done too.
        let (d, _, end) = delete_all(Deletion::new("k8s-uid-1", Some(7)), |step| match step {
            DeleteStep::Search => Ok(DeleteAnswer::Found(vec![7])),
            DeleteStep::Delete(7) => Ok(DeleteAnswer::Deleted(false)),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert!(d.deleted.is_empty());
    }

    #[test]
    fn the_recorded_instance_showing_the_reference_tag_is_deleted_and_nothing_else_of_that_tag() {
        let tag = "k8s-uid-2";
        let reference = "k8s-ref-0123";
        let read = |tags: &[&str]| -> Result<DeleteAnswer, PlatformError> {
            Ok(DeleteAnswer::Tags(tags.iter().map(|t| t.to_string()).collect()))
        };
        let deletion = Deletion::new(tag, Some(7)).or_recorded_with(Some(reference.into()));
        let (d, steps, end) = delete_all(deletion, |step| match step {
            DeleteStep::Search => Ok(DeleteAnswer::Found(vec![])),
            DeleteStep::ReadRecorded(7) => read(&["k8s-uid-1", reference]),
            DeleteStep::Delete(_) => Ok(DeleteAnswer::Deleted(true)),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert_eq!(steps, [DeleteStep::Search, DeleteStep::ReadRecorded(7), DeleteStep::Delete(7)]);
        assert_eq!(d.deleted, [7]);
        // Another resource's reference tag proves nothing.
        let deletion = Deletion::new(tag, Some(7)).or_recorded_with(Some(reference.into()));
        let (d, steps, end) = delete_all(deletion, |step| match step {
            DeleteStep::Search => Ok(DeleteAnswer::Found(vec![])),
            DeleteStep::ReadRecorded(7) => read(&["k8s-uid-1", "k8s-ref-4567"]),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert_eq!(steps, [DeleteStep::Search, DeleteStep::ReadRecorded(7)]);
        assert!(d.deleted.is_empty());
    }

    #[test]
    fn deletion_never_touches_an_instance_without_the_ownership_tag() {
        let (d, steps, end) = delete_all(Deletion::new("k8s-uid-1", Some(7)), |step| match step {
            DeleteStep::Search => Ok(DeleteAnswer::Found(vec![])),
            DeleteStep::ReadRecorded(7) => Ok(DeleteAnswer::Tags(vec!["k8s-uid-2".into()])),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert_eq!(steps, [DeleteStep::Search, DeleteStep::ReadRecorded(7)]);
        assert!(d.deleted.is_empty());
        assert_eq!(d.notes.iter().map(|n| n.reason).collect::<Vec<_>>(), ["RemoteNotOwned"]);
    }

    #[test]
    fn deletion_stops_at_a_platform_failure() {
        let (_, steps, end) = delete_all(Deletion::new("k8s-uid-1", None), |step| match step {
            DeleteStep::Search => Ok(DeleteAnswer::Found(vec![3])),
            _ => Err(PlatformError::Unauthorized { message: "rotated".into() }),
        });
        assert_eq!(steps, [DeleteStep::Search, DeleteStep::Delete(3)]);
        assert_eq!(end.unwrap_err().reason(), "Unauthorized");
    }
}
