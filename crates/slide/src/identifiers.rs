//! Patient identifiers among a slide's properties, and their redaction.
//!
//! In: property keys and values as a reader reports them (`dicom.PatientName`,
//! `dicom.IssuerOfAccessionNumberSequence[0].UniversalEntityID`, `aperio.Filename`…). Out:
//! whether a key names an identifying attribute ([`is_identifying`]), and a copy of the
//! properties with those values replaced by [`REDACTED`] ([`redact`]).
//!
//! What counts. The attributes of the DICOM standard's Basic Application Level Confidentiality
//! Profile (PS3.15 Annex E, table E.1-1) that name or point to a person, an institution, a
//! case or a date of care: the patient's names, IDs, birth date, sex, age, size, weight,
//! address, telephone numbers and comments; accession numbers and their issuers; study IDs and
//! descriptions; the dates and times of the study, series, acquisition, content and instance;
//! physicians', operators' and responsible persons' names; the institution, its address and
//! department, the station and the device serial number; and the specimen and container
//! (slide barcode) identifiers and descriptions. A key is identifying when any of its path's
//! components (a sequence on the way, or the attribute itself) is one of these, so an issuer
//! nested in a sequence is caught too. Aperio's `aperio.Filename` (often the case number) is
//! one as well, and so is the `Filename = …` field inside Aperio's `tiff.ImageDescription`
//! (and `openslide.comment`, its copy),
//! which [`redact`] replaces in place. UIDs stay: they identify the images, not the person, and
//! the archive needs them.

use std::collections::BTreeMap;

/// What a redacted value reads.
pub const REDACTED: &str = "[redacted]";

/// The identifying DICOM keywords (see the module's doc).
const DICOM: &[&str] = &[
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientBirthName",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "PatientComments",
    "PatientReligiousPreference",
    "PatientInsurancePlanCodeSequence",
    "OtherPatientIDs",
    "OtherPatientNames",
    "OtherPatientIDsSequence",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "EthnicGroup",
    "Occupation",
    "MilitaryRank",
    "MedicalRecordLocator",
    "AdditionalPatientHistory",
    "PregnancyStatus",
    "ResponsiblePerson",
    "ResponsibleOrganization",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyID",
    "StudyDescription",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "ContentDate",
    "ContentTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "OperatorsName",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "ContainerIdentifier",
    "AlternateContainerIdentifierSequence",
    "SpecimenIdentifier",
    "SpecimenShortDescription",
    "SpecimenDetailedDescription",
];

/// Whether the property `key` holds a patient identifier.
pub fn is_identifying(key: &str) -> bool {
    if key == "aperio.Filename" {
        return true;
    }
    let Some(path) = key.strip_prefix("dicom.") else {
        return false;
    };
    path.split('.').any(|component| {
        let keyword = component.split('[').next().unwrap_or(component);
        DICOM.contains(&keyword)
    })
}

/// `properties` with every identifying value replaced by [`REDACTED`] (empty values stay
/// empty: nothing is hidden there), and how many were replaced.
pub fn redact(properties: &BTreeMap<String, String>) -> (BTreeMap<String, String>, usize) {
    let mut n = 0;
    let out = properties
        .iter()
        .map(|(k, v)| {
            if is_identifying(k) && !v.is_empty() {
                n += 1;
                (k.clone(), REDACTED.to_string())
            } else if k == "tiff.ImageDescription" || k == "openslide.comment" {
                let (text, found) = aperio_filename_redacted(v);
                n += usize::from(found);
                (k.clone(), text)
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    (out, n)
}

/// An Aperio ImageDescription (`…|Filename = CMU-1|Date = …`) with its file name field's value
/// replaced, and whether there was one.
fn aperio_filename_redacted(text: &str) -> (String, bool) {
    const FIELD: &str = "|Filename = ";
    let Some(at) = text.find(FIELD) else {
        return (text.to_string(), false);
    };
    let start = at + FIELD.len();
    let end = text[start..].find('|').map_or(text.len(), |e| start + e);
    if start == end {
        return (text.to_string(), false);
    }
    (
        format!("{}{REDACTED}{}", &text[..start], &text[end..]),
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_attributes_are_identifying_wherever_they_sit_and_uids_are_not() {
        for key in [
            "dicom.PatientName",
            "dicom.PatientID",
            "dicom.PatientBirthDate",
            "dicom.AccessionNumber",
            "dicom.IssuerOfAccessionNumberSequence[0].UniversalEntityID",
            "dicom.ContributingEquipmentSequence[0].InstitutionName",
            "dicom.SpecimenDescriptionSequence[0].SpecimenIdentifier",
            "dicom.ContainerIdentifier",
            "dicom.StudyDate",
            "dicom.OtherPatientIDsSequence[1].PatientID",
            "aperio.Filename",
        ] {
            assert!(is_identifying(key), "{key}");
        }
        for key in [
            "dicom.StudyInstanceUID",
            "dicom.SeriesInstanceUID",
            "dicom.SOPInstanceUID",
            "dicom.PhotometricInterpretation",
            "dicom.SpecimenDescriptionSequence[0].SpecimenUID",
            "dicom.PatientNameless",
            "openslide.mpp-x",
            "aperio.MPP",
            "tiff.ImageDescription",
        ] {
            assert!(!is_identifying(key), "{key}");
        }
        let props: BTreeMap<String, String> = [
            ("dicom.PatientName", "Synthetic^Concatenation"),
            ("dicom.AccessionNumber", ""),
            ("dicom.Modality", "SM"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut props = props;
        props.insert(
            "tiff.ImageDescription".into(),
            "Aperio Image Library v10|AppMag = 20|Filename = CMU-1|Date = 12/29/09".into(),
        );
        let (out, n) = redact(&props);
        assert_eq!(n, 2);
        assert_eq!(
            out["tiff.ImageDescription"],
            "Aperio Image Library v10|AppMag = 20|Filename = [redacted]|Date = 12/29/09"
        );
        assert_eq!(out["dicom.PatientName"], REDACTED);
        assert_eq!(out["dicom.AccessionNumber"], "");
        assert_eq!(out["dicom.Modality"], "SM");
    }
}
