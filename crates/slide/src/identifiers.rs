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
//! department, the station and the device serial number; the specimen and container (slide
//! barcode) identifiers, their issuers and descriptions, barcode and label text, series
//! descriptions and image comments; admission, order, procedure and clinical-trial subject IDs;
//! and the free text and dates of specimen preparation steps. A key is identifying when any of its path's
//! components (a sequence on the way, or the attribute itself) is one of these, so an issuer
//! nested in a sequence is caught too. Vendor fields that carry a case name, barcode or date
//! are too (`aperio.Filename`, `aperio.Date`, `aperio.Time`, `aperio.User` (the operator),
//! `aperio.ScanScope ID` (the scanner's serial, as DICOM's DeviceSerialNumber), `leica.barcode`,
//! `philips.PIM_DP_UFS_BARCODE`, `hamamatsu.Reference`), and so are the `Filename`, `Date`,
//! `Time` and `User` fields inside an Aperio `tiff.ImageDescription` (and `openslide.comment`,
//! its copy), which [`redact`] replaces in place. UIDs stay: they
//! identify the images, not the person, and the archive needs them.

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
    "IssuerOfTheContainerIdentifierSequence",
    "IssuerOfTheSpecimenIdentifierSequence",
    "ContainerDescription",
    "BarcodeValue",
    "LabelText",
    "SeriesDescription",
    "ImageComments",
    "AdmissionID",
    "IssuerOfAdmissionIDSequence",
    "PlacerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequest",
    "RequestedProcedureID",
    "ScheduledProcedureStepID",
    "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "ClinicalTrialTimePointID",
];

/// Vendor properties that carry a barcode, case name or date of care.
const VENDOR: &[&str] = &[
    "aperio.Filename",
    "aperio.Date",
    "aperio.Time",
    "aperio.User",
    "aperio.ScanScope ID",
    "leica.barcode",
    "philips.PIM_DP_UFS_BARCODE",
    "hamamatsu.Reference",
];

/// Fields of Aperio's ImageDescription (`key = value` between `|`) redacted in place.
const APERIO_FIELDS: &[&str] = &["Filename", "Date", "Time", "User"];

/// Whether the property `key` holds a patient identifier.
pub fn is_identifying(key: &str) -> bool {
    if VENDOR.contains(&key) {
        return true;
    }
    let Some(path) = key.strip_prefix("dicom.") else {
        return false;
    };
    let keywords: Vec<&str> = path
        .split('.')
        .map(|c| c.split('[').next().unwrap_or(c))
        .collect();
    // Free text and dates in specimen preparation steps often repeat the specimen's
    // identifier or the date of care.
    if keywords.contains(&"SpecimenPreparationStepContentItemSequence")
        && matches!(
            keywords.last(),
            Some(&"TextValue" | &"DateTime" | &"Date" | &"Time")
        )
    {
        return true;
    }
    keywords.iter().any(|k| DICOM.contains(k))
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
            } else if (k == "tiff.ImageDescription" || k == "openslide.comment")
                && v.starts_with("Aperio")
            {
                let (text, found) = aperio_fields_redacted(v);
                n += found;
                (k.clone(), text)
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    (out, n)
}

/// An Aperio ImageDescription (`…|Filename = CMU-1|Date = …`) with the values of its file
/// name, date, time and user fields replaced (however the `=` is spaced), and how many were.
fn aperio_fields_redacted(text: &str) -> (String, usize) {
    let mut n = 0;
    let parts: Vec<String> = text
        .split('|')
        .enumerate()
        .map(|(i, part)| {
            let Some((key, value)) = part.split_once('=') else {
                return part.to_string();
            };
            if i == 0 || !APERIO_FIELDS.contains(&key.trim()) || value.trim().is_empty() {
                return part.to_string();
            }
            n += 1;
            let lead = &value[..value.len() - value.trim_start().len()];
            format!("{key}={lead}{REDACTED}")
        })
        .collect();
    (parts.join("|"), n)
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
            "dicom.BarcodeValue",
            "dicom.LabelText",
            "dicom.IssuerOfTheContainerIdentifierSequence[0].LocalNamespaceEntityID",
            "dicom.SpecimenDescriptionSequence[0].SpecimenPreparationSequence[0].SpecimenPreparationStepContentItemSequence[1].TextValue",
            "aperio.Filename",
            "aperio.Date",
            "leica.barcode",
            "philips.PIM_DP_UFS_BARCODE",
            "dicom.RequestedProcedureID",
            "dicom.SpecimenDescriptionSequence[0].SpecimenPreparationSequence[0].SpecimenPreparationStepContentItemSequence[2].DateTime",
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
            "dicom.SpecimenDescriptionSequence[0].SpecimenPreparationSequence[0].SpecimenPreparationStepContentItemSequence[1].ConceptNameCodeSequence[0].CodeMeaning",
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
        props.insert(
            "openslide.comment".into(),
            "Aperio Image Library v10|Filename=CMU-1|Time= 09:59:15|MPP = 0.499".into(),
        );
        let (out, n) = redact(&props);
        assert_eq!(n, 5);
        assert_eq!(
            out["tiff.ImageDescription"],
            "Aperio Image Library v10|AppMag = 20|Filename = [redacted]|Date = [redacted]"
        );
        assert_eq!(
            out["openslide.comment"],
            "Aperio Image Library v10|Filename=[redacted]|Time= [redacted]|MPP = 0.499"
        );
        assert_eq!(out["dicom.PatientName"], REDACTED);
        assert_eq!(out["dicom.AccessionNumber"], "");
        assert_eq!(out["dicom.Modality"], "SM");
    }
}
